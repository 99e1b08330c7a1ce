"""Pre-align projectors to the LLM's word embeddings, before the first LLM step.

The LLM reads text as rows of its embedding matrix. An untrained projector hands it vectors it
has never seen, and learning what they say through the whole LLM takes many steps. The training
set's own texts about its media give a cheap shortcut: each projected token is scored against the
embeddings of the LLM tokens those texts use and a learned *blank* (score: minus the squared
distance), and the projector alone learns to say its media's words. No LLM forward pass is
needed: the projector runs over the frozen encoder's outputs (the feature cache), hundreds of
items a second. Training then starts from media tokens that already sit next to words the LLM
knows.

- audio: the clip's tokens *spell* its transcript, in order, with CTC (as CTC-aligned speech LLMs).
- image: the image's tokens *name* the words of its captions, in any order: a word is present when
  any token says it (multiple-instance learning with a noisy-or over the tokens, binary
  cross-entropy against the words the captions use). With ``image_words: one`` each token says one
  word or nothing (a softmax over the words and the blank); with ``several`` each token says each
  word on its own (a sigmoid per word), so one token can say an object's colour *and* its shape.

A recipe turns it on with a ``projector_align: {steps, lr, batch_size, image_words}`` block.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from mmit.models.projectors import without_position_code

if TYPE_CHECKING:
    from mmit.data.features import FeatureStore
    from mmit.data.samples import Conversation, MediaRef

log = logging.getLogger(__name__)

RESULT_FILE = "projector_align.json"
# the texts each modality aligns to: tasks whose answers say what the media hold
TEXT_TASKS = {"audio": ("audio_transcription",), "image": ("caption_brief", "caption_detailed", "caption")}


@dataclass
class AlignResult:
    """What the alignment of one projector did; ``<run dir>/projector_align.json`` holds one per modality."""

    kind: str
    objective: str  # ctc | words | word_tags
    items: int  # clips or images aligned on
    vocabulary: int  # distinct LLM tokens the texts use (after the word filter)
    steps: int
    train_loss: float  # loss of the last batch
    seconds: float = 0.0
    # per evaluation set with such texts: items, and what greedy decoding of the aligned tokens
    # gets right before the LLM trains (CTC: token accuracy, 1 - token error rate; words: F1 of
    # the words said against the captions' words)
    heldout: dict[str, dict] = field(default_factory=dict)


def indexed(vocabulary: list[int]) -> tuple[list[int], dict[int, int]]:
    """The distinct token ids, sorted, and each one's class number from 1 (0 is the blank, or no word)."""
    words = sorted(set(vocabulary))
    return words, {t: i + 1 for i, t in enumerate(words)}


class WordClasses:
    """Classes that are the LLM's own embeddings of ``vocabulary`` (fixed) and a blank (learned)."""

    def __init__(self, embeddings: torch.Tensor, vocabulary: list[int]):
        self.vocabulary, self.index = indexed(vocabulary)
        self.words = embeddings[self.vocabulary].detach().float()
        self.blank = nn.Parameter(self.words.mean(0, keepdim=True).clone())

    def parameters(self) -> list[nn.Parameter]:
        """What the aligner itself learns beside the projector."""
        return [self.blank]

    def logits(self, projected: torch.Tensor) -> torch.Tensor:
        """[B, T, D] projected tokens -> [B, T, 1 + words] scores (blank first)."""
        centres = torch.cat([self.blank, self.words])
        return -torch.cdist(projected.float(), centres.unsqueeze(0).expand(projected.shape[0], -1, -1)).pow(2)


class CTCAligner(WordClasses):
    """Each item's tokens, in order, spell its target (CTC)."""

    objective = "ctc"

    def loss(self, projected: torch.Tensor, targets: list[list[int]]) -> torch.Tensor:
        log_probs = self.logits(projected).log_softmax(-1)
        labels = [torch.tensor([self.index[t] for t in ids], dtype=torch.long) for ids in targets]
        return F.ctc_loss(
            log_probs.transpose(0, 1),
            torch.cat(labels),
            torch.full((len(labels),), projected.shape[1], dtype=torch.long),
            torch.tensor([len(t) for t in labels], dtype=torch.long),
            zero_infinity=True,  # a transcript longer than its clip's tokens cannot be spelled: no gradient
        )

    def decode(self, projected: torch.Tensor) -> list[list[int]]:
        """Greedy CTC: the best class per token, repeats merged, blanks dropped; as LLM token ids."""
        out = []
        for path in self.logits(projected).argmax(-1).tolist():
            kept, previous = [], 0
            for c in path:
                if c != previous and c != 0:
                    kept.append(self.vocabulary[c - 1])
                previous = c
            out.append(kept)
        return out

    def score(self, decoded: list[list[int]], targets: list[list[int]]) -> dict:
        return {"token_accuracy": token_accuracy(decoded, targets)}


class NamesWords:
    """Each item's tokens name the words of its target set, in any order: a word is present when any
    token says it (noisy-or over the tokens). Subclasses say how likely a token is to say a word."""

    def token_says(self, projected: torch.Tensor) -> torch.Tensor:
        """[B, T, D] projected tokens -> [B, T, words]: the probability that each token says each word."""
        raise NotImplementedError

    def log_absent(self, projected: torch.Tensor) -> torch.Tensor:
        """[B, T, D] -> [B, words]: log P(no token says the word) = sum over tokens of log(1 - p)."""
        return torch.log1p(-self.token_says(projected).clamp(max=1 - 1e-6)).sum(1)

    def loss(self, projected: torch.Tensor, targets: list[list[int]]) -> torch.Tensor:
        log_absent = self.log_absent(projected)
        present = torch.zeros_like(log_absent)
        for row, ids in enumerate(targets):
            present[row, [self.index[t] - 1 for t in ids if t in self.index]] = 1.0
        log_present = torch.log((-torch.expm1(log_absent)).clamp(min=1e-6))
        return -(present * log_present + (1 - present) * log_absent).mean()

    def decode(self, projected: torch.Tensor) -> list[list[int]]:
        """The words said with probability over 1/2, as LLM token ids."""
        said = self.log_absent(projected) < -torch.log(torch.tensor(2.0))
        return [[self.vocabulary[i] for i in row.nonzero().flatten().tolist()] for row in said]

    def score(self, decoded: list[list[int]], targets: list[list[int]]) -> dict:
        """Micro-averaged precision, recall and F1 of the words said, against the targets' words in the vocabulary."""
        hits = said = wanted = 0
        for d, t in zip(decoded, targets, strict=True):
            truth = {w for w in t if w in self.index}
            hits, said, wanted = hits + len(set(d) & truth), said + len(set(d)), wanted + len(truth)
        precision, recall = hits / max(1, said), hits / max(1, wanted)
        return {"precision": precision, "recall": recall, "f1": 2 * precision * recall / max(1e-9, precision + recall)}


class WordSetAligner(NamesWords, WordClasses):
    """``image_words: one``: each token says one word or nothing (softmax over the blank and the words)."""

    objective = "words"

    def token_says(self, projected: torch.Tensor) -> torch.Tensor:
        return self.logits(projected).softmax(-1)[..., 1:]


class WordTagAligner(NamesWords):
    """``image_words: several``: each token says each word on its own, with probability
    sigmoid(scale * cosine(token, word embedding) + bias), scale and bias learned (SigLIP's pairwise
    sigmoid, starting at 10 and -10).

    A token pointing between two words' embeddings says both, as the token showing a red circle
    should say " red" and " circle". The cosine leaves a token's length free: with
    ``projector.output_norm=true`` every token keeps a word's length.
    """

    objective = "word_tags"

    def __init__(self, embeddings: torch.Tensor, vocabulary: list[int]):
        self.vocabulary, self.index = indexed(vocabulary)
        self.words = F.normalize(embeddings[self.vocabulary].detach().float(), dim=-1)
        self.log_scale = nn.Parameter(torch.tensor(10.0).log())
        self.bias = nn.Parameter(torch.tensor(-10.0))

    def parameters(self) -> list[nn.Parameter]:
        return [self.log_scale, self.bias]

    def token_says(self, projected: torch.Tensor) -> torch.Tensor:
        cosine = F.normalize(projected.float(), dim=-1) @ self.words.T
        return torch.sigmoid(self.log_scale.exp() * cosine + self.bias)


IMAGE_WORDS = {"one": WordSetAligner, "several": WordTagAligner}  # projector_align.image_words
ALIGNED_KINDS = ("audio", "image")  # audio spells its transcript (CTC); an image names its captions' words


def aligner_class(kind: str, settings) -> type:
    """The aligner of a modality under ``projector_align``'s settings."""
    return IMAGE_WORDS[settings.get("image_words", "one")] if kind == "image" else CTCAligner


def edit_distance(a: list[int], b: list[int]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


def token_accuracy(decoded: list[list[int]], targets: list[list[int]]) -> float:
    """1 - token error rate over all clips (can go below 0 when decoding inserts many tokens)."""
    errors = sum(edit_distance(d, t) for d, t in zip(decoded, targets, strict=True))
    return 1.0 - errors / max(1, sum(len(t) for t in targets))


def align_projector(
    projector: nn.Module,
    aligner: WordClasses | NamesWords,
    features: torch.Tensor,
    targets: list[list[int]],
    steps: int = 600,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
) -> float:
    """Train ``projector``'s trainable parameters (and the aligner's own) in place on ``aligner``'s loss.

    ``features``: encoder outputs [items, T, d_enc]; ``targets``: each item's text as LLM token
    ids. Returns the last batch's loss.
    """
    features = features.float()
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in projector.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([*params, *aligner.parameters()], lr=lr, weight_decay=0.0)
    # A tenth of the steps to warm up; OneCycleLR divides by zero when that is exactly one step.
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, lr, total_steps=steps, pct_start=0.2 if steps == 10 else 0.1
    )
    was_training = projector.training
    projector.train()
    loss = torch.tensor(float("nan"))
    # The texts say what is in the media, not which token holds it: a position code trained here
    # would become a bias toward common words. It is left out, and added only when the LLM reads.
    with without_position_code(projector):
        for _ in range(steps):
            rows = torch.randint(len(targets), (min(batch_size, len(targets)),), generator=generator)
            loss = aligner.loss(projector(features[rows]), [targets[r] for r in rows.tolist()])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    projector.train(was_training)
    return float(loss.detach())


def media_texts(conversations: list[Conversation], kind: str) -> list[tuple[MediaRef, str]]:
    """(item, text) for every answer of a ``TEXT_TASKS[kind]`` turn in a conversation about one item of ``kind``."""
    out = []
    for conv in conversations:
        if len(conv.media) != 1 or conv.media[0].kind != kind:
            continue
        answers = [m.content for m in conv.messages if m.role == "assistant"]
        for task, answer in zip(conv.meta.get("tasks") or (), answers, strict=False):
            if task in TEXT_TASKS[kind]:
                out.append((conv.media[0], answer))
    return out


def spelled(tokenizer, text: str) -> list[int]:
    """A text as the LLM's tokens for it in running text (each word with its leading space)."""
    return tokenizer(" " + " ".join(text.split()), add_special_tokens=False)["input_ids"]


def item_targets(
    pairs: list[tuple[MediaRef, str]], tokenizer, objective: str
) -> tuple[list[MediaRef], list[list[int]]]:
    """CTC: one target per (item, text). Words: one per item, the union of its texts' tokens."""
    if objective == "ctc":
        return [ref for ref, _ in pairs], [spelled(tokenizer, text) for _, text in pairs]
    refs: dict[str, MediaRef] = {}
    words: dict[str, set[int]] = {}
    for ref, text in pairs:
        refs.setdefault(ref.sha256, ref)
        words.setdefault(ref.sha256, set()).update(spelled(tokenizer, text))
    return list(refs.values()), [sorted(words[k]) for k in refs]


def informative_words(targets: list[list[int]], max_share: float = 0.9, min_items: int = 3) -> list[int]:
    """Words of a set objective: those in at least ``min_items`` items and at most ``max_share`` of them
    (a word that every image's captions use, like 'a' or '.', tells the images apart no better than the blank)."""
    counts = Counter(t for ids in targets for t in set(ids))
    return [t for t, n in counts.items() if min_items <= n <= max_share * len(targets)]


def streamed_texts(urls: list[str], kinds: list[str], max_items: int) -> list[Conversation]:
    """The conversations of a streamed training set that hold aligning texts, until ``max_items`` of each kind."""
    from mmit.data.shards import ShardStream

    found: Counter = Counter()
    out = []
    for conv in ShardStream(urls, shuffle_buffer=0):
        kinds_here = [k for k in kinds if found[k] < max_items and media_texts([conv], k)]
        if kinds_here:
            out.append(conv)
            found.update(kinds_here)
        if all(found[k] >= max_items for k in kinds):
            break
    return out


def item_features(model, kind: str, refs: list[MediaRef], store: FeatureStore | None = None, batch_size: int = 32):
    """The ``kind`` encoder's outputs for ``refs``: read from the feature cache, or computed."""
    if store is not None:
        return torch.cat([store.features(refs[i : i + 256]) for i in range(0, len(refs), 256)]).float()
    from mmit.data.collate import preprocess_media

    encoder = model.encoders[kind]
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(refs), batch_size):
            inputs = preprocess_media(refs[i : i + batch_size], {kind: encoder.preprocess})[kind]
            out.append(encoder(inputs.to(device)).float().cpu())
    encoder.train(was_training)
    return torch.cat(out)


def align_projectors(
    settings,
    model,
    tokenizer,
    data,
    stores: dict[str, FeatureStore] | None = None,
    run_dir: str | Path | None = None,
    init_from: str | None = None,
) -> dict[str, dict]:
    """A recipe's ``projector_align`` step: align each projector on the training set's texts about its media.

    ``settings``: ``{steps, lr, batch_size, max_items, image_words}`` (a mapping; ``image_words``:
    ``one`` or ``several`` words per image token, see the module's docstring). ``data``:
    ``mmit.factory.BuiltData``; its training conversations' caption / transcription turns are the
    texts (a streamed set is read once more, up to ``max_items`` texts), at most ``max_items``
    items of each modality (a seeded sample of them: their features are held in memory), and its
    evaluation sets' texts score what the aligned tokens say. Skipped, with a log line, when the
    run resumes from a checkpoint or starts from ``init_from`` (their projector weights win), for a
    frozen projector, and for a modality whose training set has no such texts. Writes
    ``<run_dir>/projector_align.json`` and returns the same: modality -> ``AlignResult`` as a dict.
    """
    from mmit.training.checkpoint import latest_checkpoint

    kinds = [k for k in ALIGNED_KINDS if k in model.projectors]
    if not kinds:
        return {}
    if run_dir is not None and latest_checkpoint(Path(run_dir)) is not None:
        log.info("projector_align: skipped, the run resumes from its checkpoint")
        return {}
    if init_from:
        log.info("projector_align: skipped, init_from=%s starts the run", init_from)
        return {}
    max_items = int(settings.get("max_items", 10000))
    train = data.train_conversations
    if train is None:  # streamed: one more pass over the shards, for the texts only
        train = streamed_texts(data.train.urls, kinds, max_items)
    embeddings = model.base_llm.get_input_embeddings().weight
    results = {}
    for kind in kinds:
        projector = model.projectors[kind]
        if not any(p.requires_grad for p in projector.parameters()):
            log.warning("projector_align: %s skipped, its projector is frozen", kind)
            continue
        chosen = aligner_class(kind, settings)
        refs, targets = item_targets(media_texts(train, kind), tokenizer, chosen.objective)
        if len(refs) > max_items:
            keep = sorted(random.Random(0).sample(range(len(refs)), max_items))
            refs, targets = [refs[i] for i in keep], [targets[i] for i in keep]
        vocabulary = [t for ids in targets for t in ids]
        if chosen.objective != "ctc":
            vocabulary = informative_words(targets)
        if not vocabulary:
            log.warning(
                "projector_align: %s skipped, the training set has no %s turns", kind, "/".join(TEXT_TASKS[kind])
            )
            continue
        started = time.perf_counter()
        store = (stores or {}).get(kind)
        features = item_features(model, kind, refs, store)
        if chosen.objective == "ctc":
            too_long = sum(len(t) > features.shape[1] for t in targets)
            if too_long:
                log.warning(
                    "projector_align: %d %s texts have more tokens than an item's %d; they give no gradient",
                    too_long, kind, features.shape[1],
                )  # fmt: skip
        aligner = chosen(embeddings, vocabulary)
        device = next(projector.parameters()).device
        loss = align_projector(
            projector,
            aligner,
            features.to(device),
            targets,
            int(settings.get("steps", 600)),
            float(settings.get("lr", 3e-3)),
            int(settings.get("batch_size", 64)),
        )
        result = AlignResult(
            kind, aligner.objective, len(refs), len(aligner.vocabulary), int(settings.get("steps", 600)), loss
        )
        with torch.no_grad():
            for name, eval_set in data.eval.items():
                held_refs, held = item_targets(media_texts(eval_set.conversations, kind), tokenizer, aligner.objective)
                if held_refs:
                    with without_position_code(projector):
                        projected = projector(item_features(model, kind, held_refs, store).to(device))
                    result.heldout[name] = {"items": len(held_refs), **aligner.score(aligner.decode(projected), held)}
        result.seconds = time.perf_counter() - started
        log.info(
            "projector_align %s (%s): %d items, %d words, %d steps, %.0f s, last loss %.3f; before the LLM trains: %s",
            kind, aligner.objective, result.items, result.vocabulary, result.steps, result.seconds, loss,
            ", ".join(f"{n} {json.dumps({k: round(v, 3) for k, v in h.items()})}" for n, h in result.heldout.items()) or "-",
        )  # fmt: skip
        results[kind] = asdict(result)
    if results and run_dir is not None and int(os.environ.get("RANK", "0")) == 0:
        from mmit.paths import atomic_write_text

        atomic_write_text(Path(run_dir) / RESULT_FILE, json.dumps(results, indent=1))
    return results
