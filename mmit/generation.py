"""Batched answer generation with the same prompt code as training."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

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
    chats: list[list[dict]],
    max_new_tokens: int = 32,
    batch_size: int = 16,
    autocast_dtype: torch.dtype | None = None,
) -> list[str]:
    """Greedy answers to each chat (which ends with a user turn), with a KV cache."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    answers = []
    for start in range(0, len(chats), batch_size):
        prompts = [encode_prompt(tokenizer, chat) for chat in chats[start : start + batch_size]]
        width = max(map(len, prompts))
        # Left padding keeps every prompt's last token at the same position for decoding.
        input_ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            out = model.llm.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        answers += [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]
    model.train(was_training)
    return answers
