"""Performance benchmarks of issue #7 (B1-B6): every figure a ratio of two variants measured side by side.

    python tools/bench_perf.py                        # all of them -> BENCHMARKS.md + docs/bench/perf.json
    python tools/bench_perf.py --only B3,B5 --quick   # a fast smoke run (tiny sizes, one repetition)
    python tools/bench_perf.py --device cuda --out /tmp/B.md

The machine is usually shared, so no absolute time is a result here. Within one run the two
variants of a benchmark alternate (A B, B A, ...), each ratio is taken from medians, and the
machine's matmul peak is measured next to the training step it is compared with. Peak memory is
measured in a fresh child process per variant (this script re-runs itself with ``--child``).

Each benchmark is a function ``bench_bN(plan: Plan) -> Result`` listed in ``BENCHMARKS``; a failing
one is reported as failed and the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model here is built from a config
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads that spin while they wait made the same training step take 12 to 70 s instead of
# 3 to 8 s on a 2-core machine shared with other jobs; sleeping waiters keep timings steady. Read
# by the OpenMP runtime when torch loads it, so it must be set before the import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from bench.harness import REPO, machine  # noqa: E402
from bench.llm import bench_b3, bench_b5, bench_b6, child_train_memory, memory_tasks, start_children  # noqa: E402
from bench.loops import bench_b1, bench_b2, bench_b4  # noqa: E402
from bench.plan import Plan, make_plan  # noqa: E402
from bench.report import Result, fmt_ratio, markdown, summary_text, verdict  # noqa: E402

DEFAULT_OUT = REPO / "BENCHMARKS.md"
DEFAULT_JSON = REPO / "docs" / "bench" / "perf.json"

BENCHMARKS: dict[str, Callable[[Plan], Result]] = {
    "B1": bench_b1,
    "B2": bench_b2,
    "B3": bench_b3,
    "B4": bench_b4,
    "B5": bench_b5,
    "B6": bench_b6,
}
CHILD_TASKS: dict[str, Callable[..., dict]] = {"train_memory": child_train_memory}


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated benchmark ids, e.g. B3,B5 (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition: a smoke run")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--json", type=Path, help="raw numbers (default: docs/bench/perf.json, or beside --out)")
    parser.add_argument("--reps", type=int, help="repetitions per variant (default 5; 1 with --quick; B3: +2)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--b4-group-by-length", type=int, default=16, help="B4's mmit sides (0 = off)")
    parser.add_argument("--b4-prefetch", type=int, help="B4's mmit sides (default: mmit's TrainerConfig)")
    parser.add_argument(
        "--b4-pack-length",
        type=int,
        help="B4: a third mmit side, packed into rows of N tokens with the feature cache (-1: the longest sample)",
    )
    parser.add_argument("--child", nargs=2, metavar=("TASK", "JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.child:
        task, kwargs = args.child
        print(json.dumps(CHILD_TASKS[task](**json.loads(kwargs))), flush=True)
        return []
    chosen = [b.strip().upper() for b in args.only.split(",")] if args.only else list(BENCHMARKS)
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; known: {', '.join(BENCHMARKS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    json_path = args.json or (DEFAULT_JSON if args.out.resolve() == DEFAULT_OUT else args.out.with_suffix(".json"))
    command = " ".join(["python tools/bench_perf.py", *(argv if argv is not None else sys.argv[1:])])

    info = machine(args.device)
    print(f"{info['cpu']}, {info['cores']} cores, device {args.device}; torch {info['torch']}", flush=True)
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="mmit-bench-perf-") as tmp:
        plan = make_plan(args, Path(tmp))
        if plan.quick:  # a smoke run: the memory children need not wait for the timings
            plan.started = {b: start_children(memory_tasks(plan, b), plan.tmp) for b in chosen if memory_tasks(plan, b)}
        for bench_id in chosen:
            print(f"{bench_id} ...", flush=True)
            t0 = time.perf_counter()
            try:
                result = BENCHMARKS[bench_id](plan)
            except Exception as error:  # one failed benchmark still leaves the others' report
                result = Result(bench_id, BENCHMARKS[bench_id].__name__, status="failed")
                result.notes.append(f"{type(error).__name__}: {error}")
                print(f"{bench_id} failed: {error}", flush=True)
            result.seconds = time.perf_counter() - t0
            results.append(result)
            print(
                f"{bench_id}: {fmt_ratio(result)} ({result.ratio_label or result.status}); {verdict(result)}; "
                f"{result.seconds:.0f} s",
                flush=True,
            )
    total = time.perf_counter() - started
    info["load_average_end"] = os.getloadavg()[0]

    from mmit.paths import atomic_write_text

    atomic_write_text(args.out, markdown(results, info, command, total))
    payload = {"command": command, "machine": info, "seconds": total, "results": [asdict(r) for r in results]}
    atomic_write_text(json_path, json.dumps(payload, indent=1, default=str) + "\n")
    print("\n" + summary_text(results))
    print(f"\nwrote {args.out} and {json_path} ({total / 60:.1f} min)")
    return results
