"""One evaluation set through the model: generated answers and teacher-forced losses, each with
the samples' own media and with media swapped between samples (``mmit.grounding``).

Training's in-loop evaluation and ``python -m mmit.eval`` both come through ``evaluate_set``,
then score with ``mmit.scoring.score_predictions``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from mmit.data.collate import Collator
from mmit.data.samples import IGNORE_INDEX, Conversation, TokenizedSample
from mmit.generation import ANSWER_BATCH, GenerationOptions, predict
from mmit.grounding import swap_plan, swapped
from mmit.models.multimodal_lm import MultimodalLM
from mmit.scoring import Prediction
from mmit.training.loss import next_token_loss_per_row

if TYPE_CHECKING:
    from mmit.benchmarks import Benchmark


@dataclass
class SetResult:
    predictions: list[Prediction]  # own media
    swapped: list[Prediction]  # the samples that have media, answered with another sample's


@torch.no_grad()
def sample_losses(
    model: MultimodalLM,
    samples: Sequence[TokenizedSample],
    collate: Collator,
    batch_size: int = 16,
    autocast_dtype: torch.dtype | None = None,
) -> list[tuple[float, int]]:
    """(summed loss, label tokens) of each sample, in order."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(samples), batch_size):
        batch = collate(list(samples[start : start + batch_size])).to(device)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            sums, counts = next_token_loss_per_row(model(batch), batch.labels, model.output_head)
        out += list(zip(sums.tolist(), counts.tolist(), strict=True))
    model.train(was_training)
    return out


def answer_ids(sample: TokenizedSample) -> list[int]:
    """The labelled tokens of the sample's last assistant turn (its answer and end-of-turn token)."""
    labelled = [i for i, label in enumerate(sample.labels) if label != IGNORE_INDEX]
    if not labelled:
        raise ValueError(f"sample {sample.id!r} has no labelled tokens")
    end = start = labelled[-1]
    while start - 1 >= 0 and sample.labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return list(sample.input_ids[start : end + 1])


def evaluate_set(
    model: MultimodalLM,
    tokenizer: PreTrainedTokenizerBase,
    name: str,
    convs: Sequence[Conversation],
    options: GenerationOptions,
    samples: Sequence[TokenizedSample] | None = None,
    swap_media: bool = True,
    seed: int = 0,
    batch_size: int = ANSWER_BATCH,
    autocast_dtype: torch.dtype | None = None,
    preprocess: dict | None = None,
    progress: bool = False,
    features: dict | None = None,
) -> SetResult:
    """Answers to ``convs`` with their own media and, for those with media, with swapped media.

    ``samples`` (the same conversations tokenized, in order) add each answer's teacher-forced
    loss, with own and with swapped media, computed from the answering's own prefill.
    ``features``: feature caches by kind, read for the media they hold (as training read them).
    """
    if samples is not None and [s.id for s in samples] != [c.id for c in convs]:
        raise ValueError(f"{name}: the tokenized samples are not the conversations given")
    references = [answer_ids(s) for s in samples] if samples is not None else None
    kwargs = {
        "batch_size": batch_size,
        "autocast_dtype": autocast_dtype,
        "preprocess": preprocess,
        "features": features,
        "progress": progress,
    }
    bar = tqdm(total=2 if swap_media else 1, desc=f"evaluate {name}", unit="pass", disable=not progress, leave=False)
    own = predict(model, tokenizer, name, convs, options, references, **kwargs)
    bar.update()
    others = []
    if swap_media:
        donor = swap_plan(convs, seed)
        swapped_convs = swapped(convs, donor)
        if swapped_convs:
            refs = [references[i] for i, _ in swapped_convs] if references is not None else None
            others = predict(model, tokenizer, name, [c for _, c in swapped_convs], options, refs, **kwargs)
        bar.update()
    bar.close()
    return SetResult(own, others)


def evaluate_benchmarks(
    model: MultimodalLM,
    tokenizer: PreTrainedTokenizerBase,
    benchmarks: Mapping[str, Benchmark],
    options: GenerationOptions,
    batch_size: int = ANSWER_BATCH,
    swap_media: bool = True,
    seed: int = 0,
    keep_max_new_tokens: bool = False,
    autocast_dtype: torch.dtype | None = None,
    preprocess: dict | None = None,
    features_for: Callable[[list[Conversation]], dict] | None = None,
) -> tuple[list[Prediction], list[Prediction], dict[str, dict], dict[str, list]]:
    """Answer and score each benchmark (``benchmarks``: name -> what ``mmit.benchmarks.load_benchmarks``
    read) with its official metric, and again with images swapped between samples; returns predictions, swapped
    predictions, scores per benchmark and EvalAI submission rows for those without references
    (test-dev). ``mmit.eval --benchmark`` and training's final evaluation (``trainer.benchmarks``)
    both come here, so a benchmark is prompted and scored the same way in both. ``features_for``:
    a benchmark's conversations -> the feature caches to read their media from (``mmit.eval
    --feature-cache``)."""
    from dataclasses import replace

    from mmit.benchmarks import vqav2

    predictions, swapped_predictions, scores, submissions = [], [], {}, {}
    for name, bench in benchmarks.items():
        opts = options  # the user's --max-new-tokens, for every answer
        if not keep_max_new_tokens:  # else lmms-eval's generation length for the task
            opts = replace(options, max_new_tokens=bench.max_new_tokens, task_max_new_tokens={})
        result = evaluate_set(
            model,
            tokenizer,
            name,
            bench.samples,
            opts,
            swap_media=swap_media and bench.has_references,
            seed=seed,
            batch_size=batch_size,
            autocast_dtype=autocast_dtype,
            preprocess=preprocess,
            progress=True,
            features=features_for(bench.samples) if features_for else None,
        )
        predictions += result.predictions
        swapped_predictions += result.swapped
        if not bench.has_references:
            ids = bench.notes.get("test_question_ids", ())
            submissions[name] = vqav2.submission(bench, result.predictions, ids)
            scores[name] = {"benchmark": name, "n": len(bench.samples), "submission": f"{name}_submission.json"}
            continue
        scored = bench.score(result.predictions)
        scored["headline"] = next(iter(scored["metrics"]))
        if len(result.swapped) == len(bench.samples):
            blind = bench.score(result.swapped)["metrics"]
            scored["swapped_media"] = blind
            scored["dependence"] = scored["metrics"][scored["headline"]] - blind[scored["headline"]]
        elif swap_media:  # the official scorers take whole sets only
            scored["no_dependence"] = (
                f"only {len(result.swapped)} of {len(bench.samples)} samples have another image in the set to swap in"
            )
        scores[name] = scored
    return predictions, swapped_predictions, scores, submissions


def benchmark_metrics(scores: dict[str, dict]) -> dict[str, float]:
    """Flat ``bench/<name>/<metric>`` values (and ``.../dependence``) for metrics logs."""
    flat = {}
    for name, b in scores.items():
        flat.update({f"bench/{name}/{k}": float(v) for k, v in b.get("metrics", {}).items()})
        if "dependence" in b:
            flat[f"bench/{name}/dependence"] = float(b["dependence"])
    return flat
