"""The short human summary written at the end of a run."""

from __future__ import annotations

from pathlib import Path

from mmit.grounding import GROUNDING_NOTE, grounding_table


def format_summary(summary: dict, run_dir: Path) -> str:
    lines = [
        f"# mmit run: {run_dir}",
        "",
        f"- LLM: {summary['llm']}",
        f"- steps: {summary['steps']} (resumed from {summary['resumed_from_step']}) on {summary['device']}, "
        f"{summary['precision']}, {summary['train_seconds']:.1f} s, {summary['tokens_per_second']:.0f} tokens/s",
        f"- training data: {summary['train_samples']}; final training loss {summary['final_train_loss']:.4f}",
    ]
    lines += speed_lines(summary)
    if summary.get("processes", 1) > 1:
        lines.append(f"- processes: {summary['processes']} (torch.distributed)")
    if summary.get("skipped_steps"):
        lines.append(f"- updates skipped for a NaN / inf loss or gradient: {summary['skipped_steps']}")
    for name, counts in summary["skipped"].items():
        if counts:
            lines.append(f"- skipped in {name}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for name, count in summary["truncated"].items():
        if count:
            lines.append(f"- truncated in {name}: {count}")
    for kind, aligned in summary.get("projector_align", {}).items():
        said = "; ".join(
            f"{name} "
            + ", ".join(f"{k} {v:.3f}" for k, v in held.items() if k != "items")
            + f" ({held['items']} items)"
            for name, held in aligned["heldout"].items()
        )
        lines.append(
            f"- {kind} projector aligned first ({aligned['objective']}): {aligned['items']} items, "
            f"{aligned['steps']} steps, {aligned['seconds']:.0f} s; before the LLM trained: {said or '-'}"
        )
    lines += [
        "",
        "## Parameters",
        "",
        "```",
        summary["parameters"],
        "```",
        "",
        "## Evaluation",
        "",
        "| metric | before | after |",
        "|---|---|---|",
    ]
    for key in summary["after"]:
        lines.append(f"| {key} | {summary['before'].get(key, float('nan')):.4f} | {summary['after'][key]:.4f} |")
    if summary.get("grounding"):
        lines += [
            "",
            "## Does it look? (after training)",
            "",
            GROUNDING_NOTE,
            "",
            *grounding_table(summary["grounding"]),
        ]
    lines += [
        "",
        f"Metrics: {run_dir / 'metrics.jsonl'} (and tensorboard/); curves: training_curves.png; "
        "answers: answers_before.json, answers_after.json",
        "",
    ]
    return "\n".join(lines)


def speed_lines(summary: dict) -> list[str]:
    """Where the training time went: padding, feature cache, useful tokens and model FLOP/s."""
    if "padding_share" not in summary:  # a summary from before these were recorded
        return []
    pack = summary.get("pack_length")
    layout = f"samples packed into rows of up to {pack} tokens" if pack else "one sample per padded row"
    compiled = ", torch.compile" if summary.get("compiled") else ""
    lines = [
        f"- batches: {layout}{compiled}; padding {100 * summary['padding_share']:.1f}% of batch tokens",
        f"- useful tokens/s: {summary['tokens_per_second']:.0f} (not padding), "
        f"{summary['label_tokens_per_second']:.0f} (label tokens)",
        f"- model FLOP/s: {summary['model_flops_per_second']:.3g} "
        f"({summary['model_flops_formula']}; N = {summary['model_flops_parameters']:,})",
    ]
    caches = summary.get("feature_cache") or {}
    if caches:
        held = "; ".join(
            f"{kind} {c['items']} items ({c['encoded_now']} encoded now, {c['items'] - c['encoded_now']} reused) in {c['dir']}"
            for kind, c in caches.items()
        )
        lines.append(
            f"- feature cache: {held}; training read {summary['feature_cache_hits']} items from it (hits), "
            f"encoded {summary['feature_cache_misses']} live (misses)"
        )
    else:
        lines.append("- feature cache: not used (encoders, if any, ran every step; the log says why)")
    return lines
