"""The model: a causal LLM whose input embeddings can receive projected media features.

With no encoders it is exactly the LLM (text-only instruction tuning is this same path).
``forward`` returns the final hidden states; the loss applies the output head itself, so
full-vocabulary logits are only computed where a label needs them.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from mmit.data.collate import Batch


class MultimodalLM(nn.Module):
    def __init__(self, llm: PreTrainedModel):
        super().__init__()
        self.llm = llm  # a transformers causal LM, possibly wrapped by peft

    @property
    def base_llm(self) -> PreTrainedModel:
        """The transformers model underneath any peft wrapper (LoRA layers stay injected)."""
        return self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm

    @property
    def output_head(self) -> nn.Module:
        return self.base_llm.get_output_embeddings()

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.base_llm.get_input_embeddings()(input_ids)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Final hidden states, (B, T, hidden)."""
        decoder = self.base_llm.get_decoder()
        out = decoder(inputs_embeds=self.embed(batch.input_ids), attention_mask=batch.attention_mask, use_cache=False)
        return out.last_hidden_state

    def logits(self, batch: Batch) -> torch.Tensor:
        """Full logits, (B, T, vocab); for evaluation and tests, not the training loss."""
        return self.output_head(self(batch))
