"""What a benchmark reports (``Result``) and how reports are written: markdown tables, BENCHMARKS.md and
the one-line summary of each benchmark."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Result:
    """One benchmark: what was compared, the side-by-side measurements, the ratio and the goal."""

    id: str
    title: str
    compared: str = ""
    status: str = "ok"  # ok | not implemented | skipped | failed
    columns: list[str] = field(default_factory=list)
    rows: list[list] = field(default_factory=list)  # one per variant, in the order of ``columns``
    ratio: float | None = None
    ratio_label: str = ""
    goal: str = ""
    met: bool | None = None  # None: no numeric goal, or nothing measured
    notes: list[str] = field(default_factory=list)
    raw: dict = field(default_factory=dict)
    seconds: float = 0.0


def markdown_table(columns: list[str], rows: list[list[str]], numeric: list[bool] | None = None) -> list[str]:
    """The lines of a markdown table of formatted cells; ``numeric`` columns are right-aligned."""
    numeric = numeric or [False] * len(columns)
    return [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def fmt(value) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "-"}[value]
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


def fmt_ratio(result: Result) -> str:
    if result.ratio is None:
        return "-"
    if "MFU" in result.ratio_label or result.ratio_label.startswith("share"):
        return f"{100 * result.ratio:.1f}%"
    return f"{result.ratio:.2f}x"


def verdict(result: Result) -> str:
    if result.status != "ok":
        return result.status
    return {True: "**met**", False: "**not met**", None: "no goal"}[result.met]


def markdown(results: list[Result], info: dict, command: str, total_s: float) -> str:
    """BENCHMARKS.md: the machine, a summary, then each benchmark's method, table, ratio and notes."""
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in info["cpu_flags"].items())
    lines = [
        "# Performance benchmarks (issue #7)",
        "",
        f"Written by `{command}` on {info['date']} ({total_s / 60:.1f} minutes). Every figure is a ratio of two "
        "variants measured side by side in this one run: the variants alternate (A B, B A, ...), ratios come from "
        "medians, and a machine peak is measured next to the step it is compared with. Absolute times are shown "
        "for context only: the machine is shared with other jobs.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| CPU | {info['cpu']}, {info['cores']} cores |",
        f"| threads | torch {info['torch_threads']}, OMP_WAIT_POLICY={info['omp_wait_policy'] or 'unset'} |",
        f"| CPU features | {flags} |",
        f"| memory | {info['memory_gib']} GiB |",
    ]
    if "gpu" in info:
        lines.append(f"| GPU | {info['gpu']} ({info['gpu_memory_gib']} GiB) |")
    lines += [
        f"| device benchmarked | {info['device']} |",
        f"| software | Python {info['python']}, torch {info['torch']}, transformers {info['transformers']}, "
        f"peft {info['peft']} |",
        f"| mmit | git {info['git']} |",
        f"| load average | {info['load_average_start']:.1f} at the start, {info.get('load_average_end', 0):.1f} "
        "at the end |",
        "",
    ]
    if info["omp_wait_policy"].upper() == "PASSIVE" and info["device"] == "cpu":
        lines += [
            "The tool sets `OMP_WAIT_POLICY=PASSIVE` unless it is set. While other jobs ran on this 2-core "
            "machine, a SmolLM2-135M forward+backward of 2 x 128 tokens took 12 to 70 s with torch's default "
            "(OpenMP threads that spin while they wait) and 3 to 8 s with sleeping waiters (measured while "
            "writing the tool).",
            "",
        ]
    lines += ["## Summary", ""]
    lines += markdown_table(
        ["benchmark", "measured", "ratio", "goal", "verdict"],
        [[f"{r.id} {r.title}", r.ratio_label or "-", fmt_ratio(r), r.goal or "-", verdict(r)] for r in results],
        [False, False, True, False, False],
    )
    for r in results:
        lines += ["", f"## {r.id}: {r.title}", ""]
        if r.compared:
            lines += [r.compared + ".", ""]
        if r.rows:
            numeric = [isinstance(c, (int, float)) for c in r.rows[0]]
            lines += markdown_table(r.columns, [[fmt(c) for c in row] for row in r.rows], numeric)
            lines.append("")
        lines.append(
            f"**{r.ratio_label or 'ratio'}: {fmt_ratio(r)}**; goal {r.goal or '-'}: {verdict(r)}"
            + (f" ({r.seconds:.0f} s)" if r.seconds else "")
            + "."
        )
        if r.notes:
            lines += [""] + [f"- {note}" for note in r.notes]
    lines += [
        "",
        "Raw numbers (every repetition): "
        "[docs/bench/perf.json](docs/bench/perf.json) when written to the default place.",
        "",
    ]
    return "\n".join(lines)


def summary_text(results: list[Result]) -> str:
    width = max(len(f"{r.id} {r.title}") for r in results)
    out = []
    for r in results:
        out.append(f"{f'{r.id} {r.title}':<{width}}  {fmt_ratio(r):>8}  goal {r.goal or '-':<12} {verdict(r)}")
    return "\n".join(out)
