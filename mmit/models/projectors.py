"""Projectors: encoder features [B, N, d_enc] -> LLM embeddings [B, M, d_llm].

``linear`` and ``mlp`` (LLaVA-1.5's two layers with GELU) keep the token count; the
``resampler`` turns any number of features into a fixed number of learned queries.
``position_code: learned`` marks each image token with where in the grid it came from
(:class:`PositionCode`); ``words`` starts that mark from the LLM's own words for the place
(:func:`place_words`), ``word_tokens`` puts those words after each image token.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


class LinearProjector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def num_tokens(self, encoder_tokens: int) -> int:
        return encoder_tokens

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)


def word_length(embeddings: torch.Tensor) -> float:
    """The median length of the LLM's word embeddings: ``output_norm`` for ``projector.output_norm=true``."""
    return float(embeddings.detach().float().norm(dim=1).median())


class MLPProjector(nn.Module):
    """``input_norm``: a LayerNorm over each feature vector first, so encoders (or layers) whose
    features differ in scale start from projections of the same size. ``output_norm``: every
    projected token rescaled to this length (the factory passes the LLM's typical word-embedding
    length for ``projector.output_norm=true``), so image tokens stay the size of the words beside them."""

    def __init__(
        self, in_dim: int, out_dim: int, depth: int = 2, input_norm: bool = False, output_norm: float | None = None
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.LayerNorm(in_dim)] if input_norm else []
        layers.append(nn.Linear(in_dim, out_dim))
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        self.mlp = nn.Sequential(*layers)
        self.output_norm = output_norm

    def num_tokens(self, encoder_tokens: int) -> int:
        return encoder_tokens

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        tokens = self.mlp(features)
        if self.output_norm:
            tokens = self.output_norm * F.normalize(tokens, dim=-1)
        return tokens


class ResamplerProjector(nn.Module):
    """Learned queries cross-attend to the features (Perceiver / Q-Former-lite)."""

    def __init__(self, in_dim: int, out_dim: int, num_queries: int = 32, heads: int = 8, depth: int = 1):
        super().__init__()
        if out_dim % heads:
            raise ValueError(f"resampler: out_dim {out_dim} is not divisible by heads {heads}")
        self.queries = nn.Parameter(torch.randn(num_queries, out_dim) * out_dim**-0.5)
        self.inputs = nn.Linear(in_dim, out_dim)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "norm_q": nn.LayerNorm(out_dim),
                    "norm_kv": nn.LayerNorm(out_dim),
                    "attn": nn.MultiheadAttention(out_dim, heads, batch_first=True),
                    "norm_ff": nn.LayerNorm(out_dim),
                    "ff": nn.Sequential(nn.Linear(out_dim, 4 * out_dim), nn.GELU(), nn.Linear(4 * out_dim, out_dim)),
                }
            )
            for _ in range(depth)
        )
        self.out = nn.LayerNorm(out_dim)

    def num_tokens(self, encoder_tokens: int) -> int:
        return self.queries.shape[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        kv = self.inputs(features)
        x = self.queries.unsqueeze(0).expand(features.shape[0], -1, -1)
        for block in self.blocks:
            context = block["norm_kv"](kv)
            x = x + block["attn"](block["norm_q"](x), context, context, need_weights=False)[0]
            x = x + block["ff"](block["norm_ff"](x))
        return self.out(x)


class VocabProjector(nn.Module):
    """Each feature becomes a soft choice of the LLM's own token embeddings.

    An MLP maps the feature to a query in the LLM's embedding space; a softmax over its dot
    products with every token embedding (scaled by a learned temperature) weighs those
    embeddings. Media tokens so start, and stay, among the vectors the LLM already reads as
    words, instead of anywhere in its input space (the idea of vocabulary-space visual tokens,
    as in V2L / SPAE tokenizers). ``embeddings``: the LLM's input embedding matrix, copied
    frozen (not saved with the projector; it is rebuilt from the LLM).
    """

    def __init__(self, in_dim: int, out_dim: int, embeddings: torch.Tensor, input_norm: bool = True):
        super().__init__()
        if embeddings.shape[1] != out_dim:
            raise ValueError(f"vocab projector: embeddings of width {embeddings.shape[1]}, LLM width {out_dim}")
        self.query = MLPProjector(in_dim, out_dim, depth=2, input_norm=input_norm)
        self.register_buffer("vocab", embeddings.detach().float().clone(), persistent=False)
        # Start with a softmax about as sharp as for unit-length queries against unit-length words.
        self.log_scale = nn.Parameter(torch.tensor(float(out_dim) ** 0.5).log())

    def num_tokens(self, encoder_tokens: int) -> int:
        return encoder_tokens

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        query = F.normalize(self.query(features).float(), dim=-1)
        keys = F.normalize(self.vocab, dim=-1)
        weights = torch.softmax(self.log_scale.exp() * query @ keys.T, dim=-1)
        return weights @ self.vocab


class PositionCode(nn.Module):
    """One vector per token position of an image, added to the projected tokens (or, ``insert``,
    put after each of them as a token of its own).

    A ViT's features carry position embeddings of their own; a CNN's pooled grid (EfficientNet)
    does not, and the LLM can tell where a token came from only by counting its place in the
    sequence. The code is in the LLM's embedding space and trains with the projector; it starts at
    zero (``learned``: training starts from the projector's reading alone) or at ``init`` (``words``:
    each cell starts as the LLM's words for where it lies). Each frame of a clip gets the same codes.
    While ``enabled`` is false the tokens pass unchanged (:func:`without_position_code`). On the
    main job no code made "is the square on the left?" learnable in 450-900 steps (docs/grounding.md).
    """

    def __init__(self, tokens: int, dim: int, init: torch.Tensor | None = None, insert: bool = False):
        super().__init__()
        if init is not None and tuple(init.shape) != (tokens, dim):
            raise ValueError(
                f"a position code for {tokens} tokens of {dim} needs init of that shape, not {tuple(init.shape)}"
            )
        self.code = nn.Parameter(torch.zeros(tokens, dim) if init is None else init.detach().float().clone())
        self.insert = insert  # each code as a token of its own after its image token, not added to it
        self.enabled = True

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return tokens
        n, total, dim = tokens.shape
        per_item = self.code.shape[0]
        if total % per_item:
            raise ValueError(f"{total} tokens are not whole images of {per_item} positions")
        tokens = tokens.view(n, total // per_item, per_item, dim)
        code = self.code.to(tokens.dtype)
        if self.insert:
            return torch.stack([tokens, code.expand_as(tokens)], dim=3).view(n, 2 * total, dim)
        return (tokens + code).view(n, total, dim)


def attach_position_code(
    projector: nn.Module, encoder_tokens: int, out_dim: int, init: torch.Tensor | None = None, insert: bool = False
) -> PositionCode:
    """``projector.position_code``, applied to every output of ``projector`` by a forward hook, so that
    the projector's own weights keep their names: a run with the code starts from one without it
    (``init_from``), and LLaVA's projector weights load into it. ``insert``: the codes are tokens of
    their own, one after each image token, and the projector's ``num_tokens`` doubles."""
    projector.position_code = PositionCode(projector.num_tokens(encoder_tokens), out_dim, init, insert)
    projector.register_forward_hook(lambda module, inputs, output: module.position_code(output))
    if insert:
        own = projector.num_tokens
        projector.num_tokens = lambda encoder_tokens: 2 * own(encoder_tokens)
    return projector.position_code


@contextmanager
def without_position_code(projector: nn.Module) -> Iterator[None]:
    """The projector's own reading, without its position code (if it has one), inside the block."""
    code = getattr(projector, "position_code", None)
    if code is None:
        yield
        return
    code.enabled = False
    try:
        yield
    finally:
        code.enabled = True


ROW_WORDS, COLUMN_WORDS = ("top", "middle", "bottom"), ("left", "middle", "right")


def place_words(tokens: int) -> list[tuple[str, str]]:
    """(row word, column word) for each cell of a square grid of ``tokens`` cells, row by row: a cell
    is named by the third of the picture its centre lies in, as people say where things are."""
    side = round(tokens**0.5)
    if side * side != tokens:
        raise ValueError(
            f"projector.position_code=words names the cells of a square grid; this projector gives {tokens} "
            "tokens a picture (use position_code=learned, or an encoder with a square grid)"
        )
    third = [min(int(3 * (i + 0.5) / side), 2) for i in range(side)]
    return [(ROW_WORDS[third[r]], COLUMN_WORDS[third[c]]) for r in range(side) for c in range(side)]


def place_word_code(tokens: int, tokenizer, embeddings: torch.Tensor) -> torch.Tensor:
    """[tokens, dim]: each grid cell's row word plus its column word, as the LLM embeds them
    (a word of several tokens is their mean; words are read with a leading space, as in a sentence)."""

    def embed(word: str) -> torch.Tensor:
        ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        return embeddings[ids].detach().float().mean(0)

    vectors = {w: embed(w) for w in {*ROW_WORDS, *COLUMN_WORDS}}
    return torch.stack([vectors[row] + vectors[column] for row, column in place_words(tokens)])


PROJECTORS = {"linear": LinearProjector, "mlp": MLPProjector, "resampler": ResamplerProjector, "vocab": VocabProjector}


def build_projector(kind: str, in_dim: int, out_dim: int, **options) -> nn.Module:
    if kind not in PROJECTORS:
        raise ValueError(f"projector kind must be one of {sorted(PROJECTORS)}, not {kind!r}")
    return PROJECTORS[kind](in_dim, out_dim, **options)
