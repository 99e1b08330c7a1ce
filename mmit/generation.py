"""Batched answer generation with the same prompt code (chat template, media splice) as training.

Evaluation, the chat CLI and the web demo all come through ``generate``: a prompt is the chat
so far (ending with a user turn) plus its media, rendered by the training chat template with a
generation prompt. Greedy decoding by default; beam search and sampling are options.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from mmit.data.collate import preprocess_media
from mmit.data.samples import Conversation, MediaRef
from mmit.data.tokenize import encode_prompt
from mmit.models.multimodal_lm import MultimodalLM
from mmit.scoring import Prediction


@dataclass
class GenerationOptions:
    max_new_tokens: int = 32
    num_beams: int = 1  # > 1: beam search
    do_sample: bool = False  # True: sampling with temperature / top_p / top_k
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    seed: int = 0  # for sampling; each call reseeds, so answers are reproducible
    repetition_penalty: float = 1.0  # > 1 discourages repeating tokens (CTRL's penalty); 1 = off

    def __post_init__(self):
        if self.max_new_tokens < 1 or self.num_beams < 1:
            raise ValueError("max_new_tokens and num_beams must be at least 1")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")
        if self.do_sample and self.num_beams > 1:
            raise ValueError("choose beam search (num_beams > 1) or sampling (do_sample), not both")
        if self.do_sample and self.temperature <= 0:
            raise ValueError("temperature must be > 0 when sampling")

    def generate_kwargs(self) -> dict:
        kwargs = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams, "do_sample": self.do_sample}
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:  # keep a model's generation_config sampling defaults from leaking into greedy / beam runs
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if self.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = self.repetition_penalty
        return kwargs

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Prompt:
    """A chat ending with a user turn, and the media its placeholders refer to, in order."""

    chat: list[dict[str, str]]
    media: list[MediaRef]


def prompt_and_reference(conv: Conversation) -> tuple[list[dict], str]:
    """Everything before the last assistant turn, and that turn's text."""
    chat = conv.as_chat()
    last = max(i for i, m in enumerate(chat) if m["role"] == "assistant")
    return chat[:last], chat[last]["content"]


@torch.no_grad()
def generate(
    model: MultimodalLM,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    options: GenerationOptions | None = None,
    batch_size: int = 16,
    autocast_dtype: torch.dtype | None = None,
    preprocess: dict | None = None,
    use_cache: bool = True,
    progress: bool = False,
    finished: list[bool] | None = None,
) -> list[str]:
    """One answer per prompt, generated in left-padded batches with a KV cache.

    ``finished``, when given, receives per answer whether it ended by itself (an end-of-turn
    token) rather than at ``max_new_tokens``.
    """
    options = options or GenerationOptions()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    slots = list(model.slots.values())
    if options.do_sample:
        torch.manual_seed(options.seed)
    all_ids = [encode_prompt(tokenizer, p.chat, slots) for p in prompts]
    # Batches of similar prompt length: less padding, and prompts of one kind (short questions,
    # captions) tend to finish together, so a batch stops decoding sooner.
    order = sorted(range(len(prompts)), key=lambda i: (len(all_ids[i]), i))
    answers: list[str] = [""] * len(prompts)
    ended: list[bool] = [False] * len(prompts)
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="generate", unit="batch", disable=not progress):
        rows = order[start : start + batch_size]
        chunk = [prompts[i] for i in rows]
        ids = [all_ids[i] for i in rows]
        width = max(map(len, ids))
        # Left padding keeps every prompt's last token at the same position for decoding.
        input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, row_ids in enumerate(ids):
            input_ids[row, width - len(row_ids) :] = torch.tensor(row_ids)
            attention_mask[row, width - len(row_ids) :] = 1
        refs = [m for p in chunk for m in p.media]
        media = {k: v.to(device) for k, v in preprocess_media(refs, preprocess or {}).items()}
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            # The same inputs as training sees: media spliced in, any soft prompt in front (mask included).
            embeds, attention_mask = model.prepare_inputs(input_ids.to(device), attention_mask.to(device), media)
            # Given only embeddings, generate returns just the new tokens.
            out = model.llm.generate(
                inputs_embeds=embeds,
                attention_mask=attention_mask,
                use_cache=use_cache,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **options.generate_kwargs(),
            )
        for i, row, done in zip(rows, out, (out == tokenizer.eos_token_id).any(dim=1).tolist(), strict=True):
            answers[i], ended[i] = tokenizer.decode(row, skip_special_tokens=True).strip(), done
    if finished is not None:
        finished += ended
    model.train(was_training)
    return answers


def generate_answers(
    model: MultimodalLM,
    tokenizer: PreTrainedTokenizerBase,
    convs: Sequence[Conversation],
    options: GenerationOptions | None = None,
    **kwargs,
) -> list[str]:
    """Answers to each conversation's last assistant turn, given everything before it."""
    prompts = [Prompt(prompt_and_reference(c)[0], list(c.media)) for c in convs]
    return generate(model, tokenizer, prompts, options, **kwargs)


def predict(
    model: MultimodalLM,
    tokenizer: PreTrainedTokenizerBase,
    set_name: str,
    convs: Sequence[Conversation],
    options: GenerationOptions | None = None,
    **kwargs,
) -> list[Prediction]:
    """Generated answers to an evaluation set's conversations, ready to score."""
    answers = generate_answers(model, tokenizer, convs, options, **kwargs)
    out = []
    for conv, answer in zip(convs, answers, strict=True):
        chat, reference = prompt_and_reference(conv)
        out.append(Prediction.of(set_name, conv, chat[-1]["content"], reference, answer))
    return out
