"""One evaluation set through the model: generated answers and teacher-forced losses, each with
the samples' own media and with media swapped between samples (``mmit.grounding``).

Training's in-loop evaluation and ``python -m mmit.eval`` both come through ``evaluate_set``,
then score with ``mmit.scoring.score_predictions``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from mmit.data.collate import Collator
from mmit.data.samples import IGNORE_INDEX, Conversation, TokenizedSample
from mmit.generation import GenerationOptions, predict
from mmit.grounding import swap_plan, swapped
from mmit.models.multimodal_lm import MultimodalLM
from mmit.scoring import Prediction
from mmit.training.loss import next_token_loss_per_row


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
    batch_size: int = 16,
    autocast_dtype: torch.dtype | None = None,
    preprocess: dict | None = None,
    progress: bool = False,
) -> SetResult:
    """Answers to ``convs`` with their own media and, for those with media, with swapped media.

    ``samples`` (the same conversations tokenized, in order) add each answer's teacher-forced
    loss, with own and with swapped media, computed from the answering's own prefill.
    """
    if samples is not None and [s.id for s in samples] != [c.id for c in convs]:
        raise ValueError(f"{name}: the tokenized samples are not the conversations given")
    references = [answer_ids(s) for s in samples] if samples is not None else None
    kwargs = {
        "batch_size": batch_size,
        "autocast_dtype": autocast_dtype,
        "preprocess": preprocess,
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
