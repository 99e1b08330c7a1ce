"""Standard multimodal benchmarks as evaluation sets: each module reads one benchmark's official
on-disk layout into mmit evaluation samples (lmms-eval's prompt) and scores replies with the
benchmark's official metric.

    bench = load_benchmark("pope", "/data/pope")
    replies = {conv.id: answer(conv) for conv in bench.samples}
    bench.score(replies)  # {"benchmark", "n", "metrics": {...}, "tables": {...}}
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from mmit.benchmarks import gqa, mmbench, mme, pope, scienceqa, textvqa, vqav2
from mmit.benchmarks.base import Benchmark, BenchmarkError

# Benchmark name -> its reader (root, **options) -> Benchmark. Names are matched exactly.
BENCHMARKS: dict[str, Callable[..., Benchmark]] = {
    "vqav2": vqav2.load_val,
    "vqav2_testdev": vqav2.load_testdev,
    "gqa": gqa.load,
    "textvqa": textvqa.load,
    "pope": pope.load,
    "scienceqa_img": scienceqa.load,
    "mme": mme.load,
    "mmbench_dev": mmbench.load,
}


def load_benchmark(name: str, root: str | os.PathLike, **options: Any) -> Benchmark:
    """The benchmark ``name`` read from ``root`` (its folder as downloaded; see each module)."""
    if name not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name](root, **options)


def load_benchmarks(specs: Mapping[str, str | os.PathLike]) -> dict[str, Benchmark]:
    """Every benchmark of ``specs`` (name -> root), all read before any is answered: a damaged second
    folder stops an evaluation at its start, not after the first benchmark's answers."""
    return {name: load_benchmark(name, root) for name, root in specs.items()}


__all__ = ["BENCHMARKS", "Benchmark", "BenchmarkError", "load_benchmark", "load_benchmarks"]
