"""Batched answer generation with the same prompt code (chat template, media splice) as training."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from mmit.data.collate import preprocess_media
from mmit.data.samples import Conversation
from mmit.data.tokenize import encode_prompt
from mmit.models.multimodal_lm import MultimodalLM


def prompt_and_reference(conv: Conversation) -> tuple[list[dict], str]:
    """Everything before the last assistant turn, and that turn's text."""
    chat = conv.as_chat()
    last = max(i for i, m in enumerate(chat) if m["role"] == "assistant")
    return chat[:last], chat[last]["content"]


@torch.no_grad()
def generate_answers(
    model: MultimodalLM,
    tokenizer: PreTrainedTokenizerBase,
    convs: list[Conversation],
    max_new_tokens: int = 32,
    batch_size: int = 16,
    autocast_dtype: torch.dtype | None = None,
    preprocess: dict | None = None,
    use_cache: bool = True,
) -> list[str]:
    """Greedy answers to each conversation's last assistant turn, given everything before it."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    slots = list(model.slots.values())
    answers = []
    for start in range(0, len(convs), batch_size):
        chunk = convs[start : start + batch_size]
        prompts = [encode_prompt(tokenizer, prompt_and_reference(c)[0], slots) for c in chunk]
        width = max(map(len, prompts))
        # Left padding keeps every prompt's last token at the same position for decoding.
        input_ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        media = {
            k: v.to(device) for k, v in preprocess_media([m for c in chunk for m in c.media], preprocess or {}).items()
        }
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            embeds = model.embed(input_ids.to(device), media)
            # Given only embeddings, generate returns just the new tokens.
            out = model.llm.generate(
                inputs_embeds=embeds,
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=use_cache,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        answers += [tokenizer.decode(row, skip_special_tokens=True).strip() for row in out]
    model.train(was_training)
    return answers
