"""PNG plots: training curves of a run, and per-task scores on seen vs held-out sets."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from mmit.paths import atomic_write_bytes  # noqa: E402
from mmit.scoring import headline_metric  # noqa: E402


def _save(fig, path: Path) -> Path:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def plot_training_curves(records: list[dict], path: Path) -> Path | None:
    """Training loss and learning rate, evaluation losses and scores per set, against the step."""
    panels = {
        "training loss": [k for k in ("train/loss",) if any(k in r for r in records)],
        "evaluation loss": sorted({k for r in records for k in r if k.startswith("eval/") and k.endswith("/loss")}),
        "evaluation score": sorted(
            {k for r in records for k in r if k.startswith("eval/") and k.count("/") == 2 and k.endswith("/score")}
        ),
        "learning rate": [k for k in ("lr",) if any(k in r for r in records)],
    }
    panels = {title: keys for title, keys in panels.items() if keys}
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels.items()):
        for key in keys:
            points = [
                (r["step"], r[key]) for r in records if isinstance(r.get(key), int | float) and math.isfinite(r[key])
            ]
            if points:
                steps, values = zip(*points)
                ax.plot(
                    steps,
                    values,
                    marker="o" if len(points) < 12 else None,
                    ms=3,
                    label=key.split("/")[1] if key.startswith("eval/") else key,
                )
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if title.startswith("evaluation"):
            ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _bars(ax, positions: list[float], values: list[float], width: float, label: str, fmt: str) -> None:
    """Bars with their values written on top; a NaN is a missing bar without a label."""
    bars = ax.bar(positions, [0 if math.isnan(v) else v for v in values], width, label=label)
    for bar, value in zip(bars, values):
        if not math.isnan(value):
            ax.annotate(
                fmt.format(value),
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )


def plot_task_scores(scores: dict, path: Path) -> Path | None:
    """Grouped bars: each task's headline score in every evaluation set (seen vs held-out)."""
    tasks_by_set = scores["tasks"]
    sets = list(tasks_by_set)
    tasks = sorted({t for per_set in tasks_by_set.values() for t in per_set})
    if not tasks:
        return None
    width = 0.8 / len(sets)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(tasks) + 1.5), 3.8))
    for i, set_name in enumerate(sets):
        values = [tasks_by_set[set_name].get(t, {}).get(headline_metric(t), math.nan) for t in tasks]
        positions = [j + (i - (len(sets) - 1) / 2) * width for j in range(len(tasks))]
        _bars(ax, positions, values, width, set_name, "{:.2f}")
    ax.set_xticks(range(len(tasks)), [f"{t}\n({headline_metric(t)})" for t in tasks], fontsize=8)
    ax.set_ylabel("score")
    ax.set_title("Per-task scores: seen vs held-out")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_benchmarks(benchmarks: dict[str, dict], path: Path) -> Path | None:
    """One bar pair per benchmark: its headline metric with the images given and with them swapped
    between samples (the gap is how much the score depends on looking)."""
    scored = {name: b for name, b in benchmarks.items() if b.get("headline")}
    if not scored:
        return None
    names = list(scored)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.4 * len(names) + 1.5), 3.6))
    own = [scored[n]["metrics"][scored[n]["headline"]] for n in names]
    swapped = [scored[n].get("swapped_media", {}).get(scored[n]["headline"], math.nan) for n in names]
    for offset, values, label in ((-0.2, own, "own image"), (0.2, swapped, "swapped image")):
        _bars(ax, [i + offset for i in range(len(names))], values, 0.4, label, "{:.3g}")
    ax.set_xticks(range(len(names)), [f"{n}\n({scored[n]['headline']})" for n in names], fontsize=8)
    ax.set_ylabel("score")
    ax.set_title("Benchmarks: own vs swapped image")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_grounding(grounding: dict[str, dict[str, dict]], path: Path) -> Path | None:
    """Per set, each task's score with its own media (95% interval), with swapped media, and the
    blind prior as a black tick: a model that looks has a gap between the first two bars. Yes/no
    tasks add their ranking AUC (own and swapped media) as open diamonds."""
    sets = [s for s, tasks in grounding.items() if tasks]
    if not sets:
        return None
    widths = [len(grounding[s]) for s in sets]  # a panel's width follows its number of tasks
    fig, axes = plt.subplots(
        1,
        len(sets),
        figsize=(1.7 * sum(widths) + 1.0 * len(sets) + 1.5, 3.8),
        squeeze=False,
        gridspec_kw={"width_ratios": widths},
    )
    for ax, set_name in zip(axes[0], sets):
        tasks = list(grounding[set_name])
        ranked = False
        for j, task in enumerate(tasks):
            g = grounding[set_name][task]
            low, high = g.get("ci95") or (math.nan, math.nan)
            error = None if math.isnan(low) else [[g["score"] - low], [high - g["score"]]]
            ax.bar(
                j - 0.2, g["score"], 0.4, color="tab:blue", yerr=error, capsize=3, label="own media" if j == 0 else None
            )
            if "swapped_media" in g:
                ax.bar(j + 0.2, g["swapped_media"], 0.4, color="tab:orange", label="swapped media" if j == 0 else None)
            if "ranking_auc" in g:  # yes/no: does the margin rank the answers, whatever the bias?
                marks = [(j - 0.2, g["ranking_auc"]), (j + 0.2, g.get("ranking_auc_swapped_media", math.nan))]
                ax.plot(
                    *zip(*marks), "D", mfc="white", color="tab:green", label=None if ranked else "yes/no ranking AUC"
                )
                ranked = True
            prior = max(g.get("prior", -math.inf), g.get("prior_question_type", -math.inf))
            if math.isfinite(prior):
                ax.hlines(
                    prior, j - 0.45, j + 0.45, colors="black", linewidth=2, label="blind prior" if j == 0 else None
                )
        labels = [f"{t}\n{grounding[set_name][t]['metric']}, n={grounding[set_name][t]['n']}" for t in tasks]
        ax.set_xticks(range(len(tasks)), labels, fontsize=7)
        ax.set_xlim(-0.6, len(tasks) - 0.4)
        ax.set_title(f"{set_name}: own vs swapped media", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("score")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return _save(fig, path)
