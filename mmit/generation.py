"""Batched answer generation with the same prompt code (chat template, media splice) as training.

Evaluation, the chat CLI and the web demo all come through ``generate``: a prompt is the chat
so far (ending with a user turn) plus its media, rendered by the training chat template with a
generation prompt. Greedy decoding by default; beam search and sampling are options.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from mmit.data.collate import media_inputs
from mmit.data.samples import Conversation, MediaRef
from mmit.data.tokenize import encode_prompt
from mmit.models.multimodal_lm import MultimodalLM
from mmit.scoring import Prediction, is_yes_no, last_task

# Prompts answered at once. Each new token reads every weight once per batch, so larger batches answer
# faster until the prompts' padding costs more: on a 2-core CPU the main job's held-out answers took
# 0.82x the time of batches of 16 (docs/evaluation.md#speed).
ANSWER_BATCH = 64


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
    # Evaluation's answers by task (the answered turn's), where they differ in length: a caption's
    # limit need not slow every yes/no down. Tasks not named get max_new_tokens.
    task_max_new_tokens: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        if min([self.max_new_tokens, *self.task_max_new_tokens.values()]) < 1 or self.num_beams < 1:
            raise ValueError("max_new_tokens and num_beams must be at least 1")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")
        if self.do_sample and self.num_beams > 1:
            raise ValueError("choose beam search (num_beams > 1) or sampling (do_sample), not both")
        if self.do_sample and self.temperature <= 0:
            raise ValueError("temperature must be > 0 when sampling")

    @classmethod
    def from_setting(cls, setting: int | Mapping[str, int], **options) -> GenerationOptions:
        """``trainer.max_new_tokens`` as the config gives it: a number for every task, or
        ``{task: number, default: number}`` (tasks not named get ``default``, else 32)."""
        if isinstance(setting, int):
            return cls(setting, **options)
        per_task = {task: int(n) for task, n in setting.items() if task != "default"}
        return cls(int(setting.get("default", 32)), task_max_new_tokens=per_task, **options)

    def limit_for(self, task: str) -> int:
        return self.task_max_new_tokens.get(task, self.max_new_tokens)

    def limits(self) -> str:
        """The answer lengths in words: "up to 12 new tokens (caption_brief 40)"."""
        per_task = ", ".join(f"{task} {n}" for task, n in sorted(self.task_max_new_tokens.items()))
        return f"up to {self.max_new_tokens} new tokens" + (f" ({per_task})" if per_task else "")

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
        """The options as JSON; per-task limits only when set, so that options without them read as
        they did before there were any (``mmit.synth`` keys its cache of LLM answers on them)."""
        out = asdict(self)
        if not out["task_max_new_tokens"]:
            del out["task_max_new_tokens"]
        return out


@dataclass
class Prompt:
    """A chat ending with a user turn, and the media its placeholders refer to, in order.

    ``reference``: token ids of the expected answer (with its end-of-turn token), whose
    teacher-forced loss ``generate`` reports when asked.
    """

    chat: list[dict[str, str]]
    media: list[MediaRef]
    reference: list[int] | None = None


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
    batch_size: int = ANSWER_BATCH,
    autocast_dtype: torch.dtype | None = None,
    preprocess: dict | None = None,
    features: dict | None = None,
    use_cache: bool = True,
    progress: bool = False,
    finished: list[bool] | None = None,
    losses: list[tuple[float, int]] | None = None,
    choices: Sequence[Sequence[int]] | None = None,
    choice_logprobs: list[list[float]] | None = None,
) -> list[str]:
    """One answer per prompt, generated in left-padded batches with a KV cache.

    ``finished``, when given, receives per answer whether it ended by itself (an end-of-turn
    token) rather than at ``max_new_tokens``. ``losses``, when given, receives per prompt the
    summed cross-entropy of its ``reference`` tokens and their count, from the same prefill.
    ``choices`` (groups of token ids, such as ``yes_no_tokens``) with ``choice_logprobs``: per
    prompt, the log-probability that the answer's first token is in each group, from the same
    prefill.
    ``features``: feature caches by kind (``mmit.data.features``); media they hold are read from
    them, as training read them, instead of being decoded and encoded. Greedy decoding runs its
    own loop over the decoder and its cache (``_greedy``); beam search and sampling go through
    transformers' ``generate``.
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
    reference_losses: list[tuple[float, int]] = [(0.0, 0)] * len(prompts)
    first_logprobs: list[list[float]] = [[] for _ in prompts]
    if (choices is None) != (choice_logprobs is None):
        raise ValueError("choices and choice_logprobs come together")
    if losses is not None and any(p.reference is None for p in prompts):
        raise ValueError("losses asked for, but a prompt has no reference")
    fast = use_cache and options.num_beams == 1 and not options.do_sample and options.repetition_penalty == 1.0
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
        media, cached = media_inputs(refs, preprocess or {}, features or {})
        media = {k: v.to(device) for k, v in media.items()}
        cached = {k: v.to(device) for k, v in cached.items()}
        references = [p.reference for p in chunk] if losses is not None else None
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            # The same inputs as training sees: media spliced in, any soft prompt in front (mask included).
            embeds, attention_mask = model.prepare_inputs(
                input_ids.to(device), attention_mask.to(device), media, cached
            )
            if fast:
                out, batch_losses, chosen = _greedy(
                    model, embeds, attention_mask, options.max_new_tokens, tokenizer.eos_token_id, references, choices
                )
            else:
                # Given only embeddings, generate returns just the new tokens.
                out = model.llm.generate(
                    inputs_embeds=embeds,
                    attention_mask=attention_mask,
                    use_cache=use_cache,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    **options.generate_kwargs(),
                )
                batch_losses = chosen = None
                if references is not None or choices is not None:  # from a prefill of their own
                    _, batch_losses, chosen = _greedy(
                        model, embeds, attention_mask, 0, tokenizer.eos_token_id, references, choices
                    )
        for k, (i, row) in enumerate(zip(rows, out, strict=True)):
            eos = (row == tokenizer.eos_token_id).nonzero()
            ended[i] = bool(len(eos))
            kept = row[: int(eos[0])] if len(eos) else row
            answers[i] = tokenizer.decode(kept, skip_special_tokens=True).strip()
            if batch_losses is not None:
                reference_losses[i] = batch_losses[k]
            if chosen is not None:
                first_logprobs[i] = chosen[k]
    if finished is not None:
        finished += ended
    if losses is not None:
        losses += reference_losses
    if choice_logprobs is not None:
        choice_logprobs += first_logprobs
    model.train(was_training)
    return answers


def _greedy(
    model: MultimodalLM,
    embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int,
    references: list[list[int]] | None = None,
    choices: Sequence[Sequence[int]] | None = None,
) -> tuple[torch.Tensor, list[tuple[float, int]] | None, list[list[float]] | None]:
    """Greedy tokens (B, <= max_new_tokens) for left-padded prompt embeddings, the references'
    teacher-forced losses and the first token's log-probability per group of ``choices``, all from
    one prefill: the references run as one block on a copy of the prompt's cache, so scoring an
    answer costs a few tokens, not a second pass over the prompt.
    """
    decoder, head = model.base_llm.get_decoder(), model.output_head
    embed = model.base_llm.get_input_embeddings()
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    hidden, cache = _decode(decoder, embeds, attention_mask, positions, None)
    first = head(hidden[:, -1]).float()
    after = positions[:, -1:] + 1  # the position of the first new token
    batch = embeds.shape[0]
    chosen = None
    if choices is not None:
        logp = first.log_softmax(-1)
        chosen = torch.stack([logp[:, list(ids)].logsumexp(-1) for ids in choices], dim=1).tolist()

    losses = None
    if references is not None:
        # Teacher forcing: reference token j is predicted from block position j-1 (j = 0: the prompt's last).
        length = max(len(r) for r in references)
        ref_ids = torch.full((batch, length), eos_token_id, dtype=torch.long, device=embeds.device)
        ref_mask = torch.zeros_like(ref_ids)
        for row, ref in enumerate(references):
            ref_ids[row, : len(ref)] = torch.tensor(ref, device=embeds.device)
            ref_mask[row, : len(ref)] = 1
        block, _ = _decode(
            decoder,
            embed(ref_ids),
            torch.cat([attention_mask, ref_mask], dim=1),
            after + torch.arange(length, device=embeds.device),
            copy.deepcopy(cache),
        )
        logits = torch.cat([first[:, None], head(block[:, :-1]).float()], dim=1)
        nll = F.cross_entropy(logits.transpose(1, 2), ref_ids, reduction="none") * ref_mask
        losses = list(zip(nll.sum(1).tolist(), ref_mask.sum(1).tolist(), strict=True))

    tokens = []
    mask, position, logits = attention_mask, after, first
    done = torch.zeros(batch, dtype=torch.bool, device=embeds.device)
    for step in range(max_new_tokens):
        token = logits.argmax(-1)
        tokens.append(token)
        done |= token == eos_token_id
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
        hidden, cache = _decode(decoder, embed(token[:, None]), mask, position, cache)
        position = position + 1
        logits = head(hidden[:, -1]).float()
    generated = torch.stack(tokens, dim=1) if tokens else embeds.new_zeros((batch, 0), dtype=torch.long)
    return generated, losses, chosen


@functools.cache
def _cache_argument(decoder_type: type) -> str:
    """transformers 5.x renamed the decoder's ``past_key_values`` argument to ``cache``."""
    return "cache" if "cache" in inspect.signature(decoder_type.forward).parameters else "past_key_values"


def _decode(decoder, embeds, attention_mask, positions, cache):
    """One decoder call with a KV cache: (last hidden states, the cache to continue from)."""
    name = _cache_argument(type(decoder))
    out = decoder(
        inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions, use_cache=True, **{name: cache}
    )
    return out.last_hidden_state, out["cache"] if "cache" in out else out["past_key_values"]


def yes_no_tokens(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]] | None:
    """The first tokens an answer "yes" and an answer "no" can start with (any case, with or without
    a leading space), those the two share left out; None when nothing is left of either."""

    def firsts(word: str) -> set[int]:
        spellings = (word, word.capitalize(), " " + word, " " + word.capitalize())
        return {ids[0] for ids in (tokenizer.encode(s, add_special_tokens=False) for s in spellings) if ids}

    yes, no = firsts("yes"), firsts("no")
    yes, no = sorted(yes - no), sorted(no - yes)
    return (yes, no) if yes and no else None


def generate_answers(
    model: MultimodalLM,
    tokenizer: PreTrainedTokenizerBase,
    convs: Sequence[Conversation],
    options: GenerationOptions | None = None,
    references: Sequence[list[int]] | None = None,
    **kwargs,
) -> list[str]:
    """Answers to each conversation's last assistant turn, given everything before it
    (``references`` and ``losses``: as ``generate`` takes them)."""
    refs = references if references is not None else [None] * len(convs)
    prompts = [Prompt(prompt_and_reference(c)[0], list(c.media), r) for c, r in zip(convs, refs, strict=True)]
    return generate(model, tokenizer, prompts, options, **kwargs)


def predict(
    model: MultimodalLM,
    tokenizer: PreTrainedTokenizerBase,
    set_name: str,
    convs: Sequence[Conversation],
    options: GenerationOptions | None = None,
    references: Sequence[list[int]] | None = None,
    **kwargs,
) -> list[Prediction]:
    """Generated answers to an evaluation set's conversations, ready to score; with ``references``
    (each answer's token ids) also each answer's teacher-forced loss. Answers to yes/no tasks carry
    their first token's margin, log p(yes) - log p(no), whatever they said. Each task's answers
    are generated with its own limit (``GenerationOptions.task_max_new_tokens``)."""
    options = options or GenerationOptions()
    yes_no = yes_no_tokens(tokenizer) if any(is_yes_no(c) for c in convs) else None
    by_limit: dict[int, list[int]] = {}
    for i, conv in enumerate(convs):
        by_limit.setdefault(options.limit_for(last_task(conv)), []).append(i)
    answers: list[str] = [""] * len(convs)
    losses: list = [None] * len(convs)
    logprobs: list = [None] * len(convs)
    for limit, rows in by_limit.items():
        group_losses = [] if references is not None else None
        group_logprobs = [] if yes_no else None
        group = generate_answers(
            model,
            tokenizer,
            [convs[i] for i in rows],
            replace(options, max_new_tokens=limit, task_max_new_tokens={}),
            [references[i] for i in rows] if references is not None else None,
            losses=group_losses,
            choices=yes_no,
            choice_logprobs=group_logprobs,
            **kwargs,
        )
        for k, i in enumerate(rows):
            answers[i] = group[k]
            losses[i] = group_losses[k] if group_losses is not None else None
            logprobs[i] = group_logprobs[k] if group_logprobs is not None else None
    out = []
    for k, (conv, answer) in enumerate(zip(convs, answers, strict=True)):
        chat, reference = prompt_and_reference(conv)
        prediction = Prediction.of(set_name, conv, chat[-1]["content"], reference, answer)
        if losses[k] is not None:
            prediction.loss, prediction.label_tokens = losses[k]
        if logprobs[k] is not None and is_yes_no(conv):
            prediction.yes_no_margin = logprobs[k][0] - logprobs[k][1]
        out.append(prediction)
    return out
