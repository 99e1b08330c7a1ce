"""The model: a causal LLM whose input embeddings receive projected media features.

Each ``<image>`` placeholder was expanded to as many tokens as its projector outputs; here
those positions get the projected encoder features in one masked assignment. With no media
in a batch no encoder runs, and the model is exactly the LLM (text-only instruction tuning
is this same path). ``forward`` returns the final hidden states; the loss applies the
output head itself, so full-vocabulary logits are only computed where a label needs them.
With prompt tuning, the LLM's soft prompt goes before every sequence (``prepare_inputs``,
shared with generation) and its positions are dropped from the hidden states again.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from mmit.data.collate import Batch
from mmit.data.samples import MediaSlot
from mmit.models import attention


class MultimodalLM(nn.Module):
    def __init__(
        self,
        llm: PreTrainedModel,
        encoders: dict[str, nn.Module] | None = None,
        projectors: dict[str, nn.Module] | None = None,
        slots: dict[str, MediaSlot] | None = None,
    ):
        super().__init__()
        self.llm = llm  # a transformers causal LM, possibly wrapped by peft
        self.encoders = nn.ModuleDict(encoders or {})
        self.projectors = nn.ModuleDict(projectors or {})
        self.slots = dict(slots or {})  # modality -> placeholder token and count
        # Frozen parameters that init_from set: checkpoints keep them beside the trained ones,
        # because a run folder is rebuilt without init_from (mmit.inference.load_run).
        self.kept_from_init: frozenset[str] = frozenset()
        if set(self.encoders) != set(self.projectors) or set(self.encoders) != set(self.slots):
            raise ValueError("every encoder needs a projector and a media slot")

    def train(self, mode: bool = True) -> MultimodalLM:
        super().train(mode)
        # Frozen or LoRA-tuned encoders stay in eval mode: their batch-norm statistics and
        # dropout belong to the pretrained weights. Only a fully tuned encoder trains as a whole.
        for encoder in self.encoders.values():
            if not all(p.requires_grad for p in encoder.parameters()):
                encoder.eval()
        return self

    @property
    def base_llm(self) -> PreTrainedModel:
        """The transformers model underneath any peft wrapper (LoRA layers stay injected)."""
        return self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm

    @property
    def output_head(self) -> nn.Module:
        return self.base_llm.get_output_embeddings()

    def embed(
        self,
        input_ids: torch.Tensor,
        media: dict[str, torch.Tensor] | None = None,
        features: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Token embeddings with media features spliced in at their placeholder positions.

        ``media`` go through their encoder; ``features`` are encoder outputs already (a cache).
        """
        is_media = {kind: input_ids == slot.token_id for kind, slot in self.slots.items()}
        any_media = torch.zeros_like(input_ids, dtype=torch.bool)
        for mask in is_media.values():
            any_media |= mask
        # Placeholder ids may lie outside the LLM's vocabulary; they are overwritten below.
        embeds = self.base_llm.get_input_embeddings()(input_ids.masked_fill(any_media, 0))
        encoded = {kind: self.encoders[kind](inputs) for kind, inputs in (media or {}).items()}
        for kind, cached in (features or {}).items():
            if kind in encoded:
                raise ValueError(f"{kind} media given both raw and as cached features")
            encoded[kind] = cached.to(embeds.dtype)
        for kind, outputs in encoded.items():
            projected = self.projectors[kind](outputs)
            mask = is_media[kind]
            if int(mask.sum()) != projected.shape[0] * projected.shape[1]:
                raise ValueError(
                    f"{int(mask.sum())} {kind} placeholder tokens for {projected.shape[0]} item(s) "
                    f"of {projected.shape[1]} tokens"
                )
            embeds = embeds.masked_scatter(mask.unsqueeze(-1), projected.to(embeds.dtype))
        return embeds

    @property
    def soft_prompt(self) -> nn.Module | None:
        """Prompt tuning's learned embeddings (``mmit.models.tuning.SoftPrompt``), if the LLM has them."""
        return getattr(self.base_llm, "soft_prompt", None)

    def prepare_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        media: dict[str, torch.Tensor] | None = None,
        features: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What the decoder reads: input embeddings and attention mask, after any soft prompt."""
        embeds = self.embed(input_ids, media, features)
        if self.soft_prompt is None:
            return embeds, attention_mask
        prompt = self.soft_prompt(embeds.shape[0]).to(embeds.dtype)
        # Before any left padding too: generation derives positions from the mask, so the prompt
        # takes positions 0..N-1 and the text follows it as in training.
        prompt_mask = attention_mask.new_ones(prompt.shape[:2])
        return torch.cat([prompt, embeds], dim=1), torch.cat([prompt_mask, attention_mask], dim=1)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Final hidden states, (B, T, hidden): one per input token, in line with the labels."""
        decoder = self.base_llm.get_decoder()
        if batch.position_ids is not None:
            if self.soft_prompt is not None:
                raise ValueError("prompt tuning prepends one prompt per row: it cannot train on packed rows")
            # No 2-D mask: transformers reads the sample boundaries from where positions restart
            # and builds the block-diagonal causal mask (or the varlen call) itself; packed_sdpa
            # is handed the samples' spans instead and attends within each on its own.
            embeds = self.embed(batch.input_ids, batch.media, batch.features)
            extra = {}
            if decoder.config._attn_implementation == attention.NAME:  # each sample's attention on its own
                spans = batch.spans if batch.spans is not None else attention.sample_spans(batch.position_ids)
                extra["packed_spans"] = spans
            out = decoder(inputs_embeds=embeds, position_ids=batch.position_ids, use_cache=False, **extra)
            return out.last_hidden_state
        embeds, attention_mask = self.prepare_inputs(batch.input_ids, batch.attention_mask, batch.media, batch.features)
        out = decoder(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state[:, embeds.shape[1] - batch.input_ids.shape[1] :]

    def logits(self, batch: Batch) -> torch.Tensor:
        """Full logits, (B, T, vocab); for evaluation and tests, not the training loss."""
        return self.output_head(self(batch))
