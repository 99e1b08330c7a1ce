"""Measuring, shared by the benchmarks: timing, alternating repetitions, process memory, the matmul peak
and a record of the machine. torch is imported where it is needed: bench_memory's sampler never loads it."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[2]


# --- time ------------------------------------------------------------------------------------


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str = "cpu") -> float:
    """Wall seconds of one call (CUDA: from an idle device to an idle device)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def in_turn(names: list[str], rep: int) -> list[str]:
    """The order of repetition ``rep``: A B, then B A, ... so a slow spell of a shared machine weighs on
    both sides."""
    return names if rep % 2 == 0 else names[::-1]


def alternate(sides: dict[str, Callable[[], float]], reps: int, label: str = "") -> dict[str, list[float]]:
    """Seconds of each side per repetition (each side times itself), alternating the order; with a
    ``label``, a progress line per repetition."""
    seconds = {name: [] for name in sides}
    for rep in range(reps):
        for name in in_turn(list(sides), rep):
            seconds[name].append(sides[name]())
        if label:
            print(f"  {label} rep", rep + 1, ", ".join(f"{n} {s[-1]:.1f} s" for n, s in seconds.items()), flush=True)
    return seconds


def interleaved(variants: dict[str, Callable[[], object]], reps: int, device: str, warmup: int = 1) -> dict:
    """Seconds per call of each variant, alternating the order every repetition (A B, B A, ...)."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    return alternate({name: (lambda fn=fn: timed(fn, device)) for name, fn in variants.items()}, reps)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def share(part: float, whole: float) -> float:
    return part / whole if whole else float("nan")


def spread(values: list[float]) -> str:
    """The fastest and slowest repetition: how noisy the machine was."""
    return f"{min(values):.2f}-{max(values):.2f}" if values else "-"


# --- memory ----------------------------------------------------------------------------------


def proc_status_mib(key: str, pid: int | str = "self") -> float | None:
    """A memory line of /proc/<pid>/status (``VmRSS``, ``VmHWM``) in MiB; None once the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in lines:
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # kB -> MiB
    return None


def rss_mib(pid: int | str = "self") -> float | None:
    """Resident set size of a process (this one unless given)."""
    return proc_status_mib("VmRSS", pid)


def reset_peak_rss() -> bool:
    """Set this process's RSS high-water mark to its current RSS (Linux clear_refs); False if not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float | None:
    return proc_status_mib("VmHWM")


# --- the machine's matmul peak ---------------------------------------------------------------


def matmul_rate(dtype: torch.dtype, device: str, n: int, target_s: float) -> tuple[float, float]:
    """(FLOP/s, seconds of one call) of an n x n x n matmul: best of three timings of enough calls
    to last ``target_s``."""
    import torch

    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    once = timed(lambda: a @ b, device)  # also the warm-up
    calls = max(1, min(1000, int(target_s / max(once, 1e-6))))

    def run():
        for _ in range(calls):
            a @ b

    best = min(timed(run, device) for _ in range(3))
    return 2 * n**3 * calls / best, best / calls


def matmul_peak(dtype: torch.dtype, device: str, sizes: list[int] | None, quick: bool) -> tuple[float, int]:
    """(FLOP/s, n) of the fastest square matmul size; ``sizes`` None: double n (from 256) until one
    call takes ``target`` seconds (a slow dtype, such as bf16 without AMX, stops early)."""
    target = 0.02 if quick else (0.05 if device == "cuda" else 0.2)
    if sizes is not None:
        rates = {n: matmul_rate(dtype, device, n, target)[0] for n in sizes}
    else:
        rates, n, cap = {}, 256, 512 if quick else (16384 if device == "cuda" else 4096)
        while n <= cap:
            rates[n], one_call = matmul_rate(dtype, device, n, target)
            if one_call > target:
                break
            n *= 2
    best = max(rates, key=rates.get)
    return rates[best], best


# --- the machine -----------------------------------------------------------------------------


def processor() -> str:
    """The CPU as Python's platform module names it (often only the architecture)."""
    return platform.processor() or platform.machine()


def machine(device: str) -> dict:
    """Where a run happened: CPU and its features, threads, memory, software, mmit's commit, load."""
    import peft
    import torch
    import transformers

    cpu, flags = "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    cpu = cpu or processor()
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "mmit"], cwd=REPO, capture_output=True, text=True)
        revision = commit.stdout.strip() + (" (mmit/ has uncommitted changes)" if dirty.stdout.strip() else "")
    except OSError:
        revision = "unknown"
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "cpu_flags": {f: f in flags.split() for f in wanted},
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "device": device,
        "git": revision,
        "load_average_start": os.getloadavg()[0],
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info
