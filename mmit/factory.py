"""Config -> objects. The one module that calls ``hydra.utils.instantiate``.

Model and training modules are imported inside the functions that need them, so that dataset
building (which only instantiates annotation readers) does not pay for importing torch models.
"""

from __future__ import annotations

import logging
import random
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mmit.data.sources import DataFiles, read_conversations
from mmit.grounding import AnswerPrior
from mmit.paths import cache_dir

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from concurrent.futures import ProcessPoolExecutor

    from mmit.data.collate import Collator
    from mmit.data.datasets import StreamedDataset, TokenizedDataset
    from mmit.data.features import FeatureStore
    from mmit.data.samples import MediaRef, MediaSlot
    from mmit.models.multimodal_lm import MultimodalLM
    from mmit.training.distributed import Dist
    from mmit.training.loop import EvalSet, TrainerConfig

log = logging.getLogger(__name__)

# Each modality's encoder config group (video frames go through the image encoder).
ENCODER_GROUPS = {"image": "vision_encoder", "audio": "audio_encoder", "video": "vision_encoder"}

TINY_NOTE = (
    "llm=tiny is a random 2-layer model: empty, repeated or gibberish answers and scores near 0 (or at the "
    "blind prior) are expected, before and after training; it checks that the pipeline runs, not that it learns."
)


@dataclass
class BuiltModel:
    model: MultimodalLM
    tokenizer: object
    source: str
    table: str  # trainable vs frozen parameters per component


@dataclass
class BuiltData:
    train: TokenizedDataset | StreamedDataset
    eval: dict[str, EvalSet]
    files: DataFiles
    read_skips: dict[str, Counter] = field(default_factory=dict)  # per set, per reason, while reading
    prior: AnswerPrior | None = None  # the training set's answers (the blind prior); None when streamed
    train_conversations: list | None = None  # as read (projector_align reads their texts); None when streamed

    def skipped(self) -> dict[str, dict[str, int]]:
        """Everything skipped so far, per set and reason (a streamed set keeps counting)."""
        sets = {"train": self.train, **{name: e.tokens for name, e in self.eval.items()}}
        return {name: dict(self.read_skips.get(name, Counter()) + data.skipped) for name, data in sets.items()}

    def truncated(self) -> dict[str, int]:
        return {"train": self.train.truncated, **{name: e.tokens.truncated for name, e in self.eval.items()}}


def reseed(cfg: DictConfig, component: str) -> None:
    """Seed the global generator for what is initialised after ``component`` was loaded.

    Loading may or may not consume random numbers (a tiny model is built on first use and
    read from the cache after), so new weights (LoRA, projectors) are seeded from the run's
    seed and the component's name alone: the same config always starts from the same weights.
    """
    import torch

    torch.manual_seed(zlib.crc32(f"{cfg.get('seed', 0)}:{component}".encode()))


def build_model(cfg: DictConfig) -> BuiltModel:
    """LLM (+ tuning), and for each configured encoder its projector and placeholder token."""
    from mmit.data.samples import MediaSlot
    from mmit.models.llava_import import check_llava_start, is_llava_checkpoint, load_llava_projector
    from mmit.models.llm import set_system_prompt
    from mmit.models.multimodal_lm import MultimodalLM
    from mmit.models.projectors import attach_position_code, build_projector, place_word_code, word_length
    from mmit.models.tuning import apply_tuning, narrow_frozen, parameter_table, resolve_frozen_dtype
    from mmit.training.checkpoint import load_matching

    loaded = instantiate(cfg.llm)
    if str(cfg.llm.get("_target_", "")).endswith(".load_tiny"):
        log.warning(TINY_NOTE)
    set_system_prompt(loaded.tokenizer, (cfg.get("data") or {}).get("system_prompt"))
    reseed(cfg, "llm")
    method = cfg.peft.method
    # A peft config (lora, dora, ia3) or one of ours (prompt_tuning, bitfit, adapter); none for full / frozen.
    peft_config = instantiate(cfg.peft.config, _convert_="all") if cfg.peft.get("config") else None
    with warnings.catch_warnings():
        # peft (0.21) reads transformers' deprecated alias `is_gradient_checkpointing` when it wraps a
        # model, which printed a FutureWarning on every command; only that warning, only here.
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        llm = apply_tuning(loaded.model, method, peft_config, name="llm", tokenizer=loaded.tokenizer)
    frozen_dtype = resolve_frozen_dtype(cfg.get("frozen_dtype", "auto"), loaded.stored_dtype)
    if frozen_dtype is not None:
        log.info("frozen LLM weights kept in %s: %d tensors", frozen_dtype, narrow_frozen(llm, frozen_dtype))
    components = {"llm": (llm, method)}
    encoders, projectors, slots = {}, {}, {}
    embeddings = loaded.model.get_input_embeddings().weight  # the LLM's words, for projectors that start from them
    hidden = embeddings.shape[1]
    for kind, group in (("image", "vision_encoder"), ("audio", "audio_encoder")):
        if not cfg.get(group):
            continue
        if not cfg.get("projector"):
            raise ValueError(f"{group} is set but no projector is: add projector=mlp (or linear, resampler)")
        encoder = instantiate(cfg[group])
        reseed(cfg, group)
        encoder = apply_tuning(encoder, cfg.tuning[group], name=group)
        options = OmegaConf.to_container(cfg.projector)
        if options["kind"] == "vocab":  # soft choices of the LLM's own token embeddings
            options["embeddings"] = embeddings
        from_llava = "llava" in options and kind == "image"  # projector=llava: LLaVA's weights for the image path
        options.pop("llava", None)
        position_code = options.pop("position_code", "none")  # none, learned, words or word_tokens (mmit.config_checks)
        if options.get("output_norm"):  # the median length of the LLM's word embeddings
            options["output_norm"] = word_length(embeddings)
        projector = build_projector(options.pop("kind"), encoder.output_dim, hidden, **options)
        if from_llava:
            load_llava_projector(projector, cfg.projector.llava)
        projector = apply_tuning(projector, cfg.tuning.projector, name="projector")
        # Where in the picture a token came from: images (and video frames) only, as audio encoders
        # give their tokens positions of their own. A new weight, it trains unless the projector is frozen.
        if position_code != "none" and kind == "image":
            init = None
            if position_code in ("words", "word_tokens"):  # each cell starts as the LLM's words for its place
                tokens = projector.num_tokens(encoder.num_tokens)
                init = place_word_code(tokens, loaded.tokenizer, embeddings)
            insert = position_code == "word_tokens"  # a token of its own after each image token
            code = attach_position_code(projector, encoder.num_tokens, hidden, init, insert)
            code.requires_grad_(cfg.tuning.projector != "frozen")
        elif position_code != "none":
            log.info(
                "projector.position_code=%s applies to images and video; the %s projector has none", position_code, kind
            )
        encoders[kind], projectors[kind] = encoder, projector
        components[group] = (encoder, cfg.tuning[group])
        components[f"projector ({kind})"] = (projector, cfg.tuning.projector)
    if cfg.get("video"):  # frames through the image encoder and projector, marked in time
        if "image" not in encoders:
            raise ValueError("video is set but no vision_encoder is: video frames go through the image encoder")
        encoders["video"], projectors["video"] = video_path(cfg, encoders["image"], projectors["image"])
        components["frame code (video)"] = (projectors["video"].frame_code, cfg.tuning.projector)
    for kind in encoders:
        placeholder = f"<{kind}>"
        loaded.tokenizer.add_tokens([placeholder], special_tokens=True)
        count = projectors[kind].num_tokens(encoders[kind].num_tokens)
        slots[kind] = MediaSlot(placeholder, loaded.tokenizer.convert_tokens_to_ids(placeholder), count, kind=kind)
    if slots:
        log.info("tokens per media item: %s", ", ".join(f"{kind} {slot.count}" for kind, slot in slots.items()))
    model = MultimodalLM(llm, encoders, projectors, slots)
    if cfg.get("init_from") and is_llava_checkpoint(cfg.init_from):  # +model=llava read it above
        log.info("%s built from the LLaVA checkpoint %s", ", ".join(check_llava_start(cfg)), cfg.init_from)
    elif cfg.get("init_from"):
        loaded_names = load_matching(model, cfg.init_from)
        log.info("initialised %d tensors from %s", len(loaded_names), cfg.init_from)
        model.kept_from_init = frozenset(
            n for n, p in model.named_parameters() if n in loaded_names and not p.requires_grad
        )
    return BuiltModel(model, loaded.tokenizer, loaded.source, parameter_table(components))


def video_path(cfg: DictConfig, image_encoder, image_projector):
    """``video``'s encoder and projector: the image encoder and projector themselves (shared, so
    what they learn from images serves the frames), with frame pooling and a frame code around them."""
    from mmit.models.tuning import apply_tuning
    from mmit.models.video import FrameCode, TemporalProjector, VideoEncoder

    options = OmegaConf.to_container(cfg.video, resolve=True)
    temporal = options.pop("temporal", "learned")
    encoder = VideoEncoder(image_encoder, **options)
    code = getattr(image_projector, "position_code", None)
    if code is not None and code.insert:
        raise ValueError("projector.position_code=word_tokens is for images; video takes none, learned or words")
    if code is not None and image_projector.num_tokens(encoder.tokens_per_frame) != code.code.shape[0]:
        raise ValueError(
            f"projector.position_code marks the image's {code.code.shape[0]} token positions; video.pool_to="
            f"{encoder.pool_to} gives frames of {encoder.tokens_per_frame} tokens: set video.pool_to to the image "
            "grid's side (or null), or projector.position_code=none"
        )
    reseed(cfg, "video")
    code = apply_tuning(
        FrameCode(encoder.sampling.frames, encoder.output_dim, temporal), cfg.tuning.projector, name="frame code"
    )
    return encoder, TemporalProjector(image_projector, code)


def build_data(cfg: DictConfig, tokenizer, slots: list[MediaSlot] = ()) -> BuiltData:
    """Read, validate and tokenize the training set and every evaluation set.

    Every record is checked as it is read (``mmit.data.sources``); media of a kind the model has
    no encoder for are an error or a counted skip, never silently dropped. ``data.max_pixels``
    also bounds the images that training decodes (``mmit.data.media``).
    """
    from mmit.data.datasets import StreamedDataset, TokenizedDataset
    from mmit.data.media import DEFAULT_MAX_PIXELS, set_max_pixels
    from mmit.data.shards import shard_urls
    from mmit.data.tokenize import MAX_MEDIA, Tokenizer
    from mmit.training.loop import EvalSet

    files: DataFiles = instantiate(cfg.data.source, _convert_="all")
    if not isinstance(files, DataFiles):
        raise TypeError(f"data.source must produce a DataFiles, got {type(files).__name__}")
    d = cfg.data
    read_skips: dict[str, Counter] = {}
    max_pixels = d.get("max_pixels") or DEFAULT_MAX_PIXELS
    set_max_pixels(max_pixels)
    media_kinds = {slot.kind for slot in slots}

    def tokenizer_for() -> Tokenizer:
        return Tokenizer(tokenizer, d.max_length, d.overlength, d.on_error, list(slots), d.get("max_media", MAX_MEDIA))

    def load(name: str, paths: list[str], shuffle: bool) -> tuple[TokenizedDataset, list]:
        read_skips[name] = Counter()
        convs = read_conversations(
            paths,
            on_error=d.on_error,
            skipped=read_skips[name],
            media_kinds=media_kinds,
            max_pixels=max_pixels,
            allow_outside_root=bool(d.get("allow_outside_root", False)),
        )
        if d.get("tasks"):  # e.g. captions only, for projector alignment
            convs = [c for c in convs if set(c.meta.get("tasks", [])) <= set(d.tasks)]
        if shuffle:  # evaluation subsets (first batches, first generations) should mix tasks
            random.Random(0).shuffle(convs)
        tokens = TokenizedDataset(convs, tokenizer_for(), name=name)
        kept = {s.id for s in tokens.samples}
        return tokens, [c for c in convs if c.id in kept]

    if d.get("stream"):
        if d.get("tasks"):
            raise ValueError("data.tasks filtering is not available with data.stream=true")
        urls = [u for folder in files.train for u in shard_urls(folder)]
        train, prior, train_convs = StreamedDataset(urls, tokenizer_for(), d.get("shuffle_buffer", 1000)), None, None
    else:
        train, train_convs = load("train", files.train, shuffle=False)
        prior = AnswerPrior.from_conversations(train_convs)
    eval_sets = {name: EvalSet(*load(name, paths, shuffle=True)) for name, paths in files.eval.items()}
    return BuiltData(train, eval_sets, files, read_skips, prior, train_convs)


def prepare_feature_caches(cfg: DictConfig, model, data: BuiltData, device: str = "cpu") -> dict:
    """``feature_cache`` for training: the media of the training and evaluation sets (see
    :func:`feature_stores`)."""
    from mmit.data.datasets import StreamedDataset
    from mmit.data.shards import ShardStream

    def refs():
        for dataset in [data.train, *(e.tokens for e in data.eval.values())]:
            if isinstance(dataset, StreamedDataset):  # one unshuffled pass over the shards
                yield from (m for conv in ShardStream(dataset.urls, shuffle_buffer=0) for m in conv.media)
            else:
                yield from (m for sample in dataset.samples for m in sample.media)

    return feature_stores(cfg, model, refs, device)


def feature_stores(
    cfg: DictConfig,
    model,
    refs: Callable[[], Iterable[MediaRef]],
    device: str = "cpu",
    fingerprints: dict | None = None,
) -> dict:
    """``feature_cache``: null (encoders run every step) | auto (under the mmit cache, one folder
    per encoder fingerprint; a trained encoder's media are left out, with a log line) | a directory
    (every encoder must be frozen). Encodes whatever of ``refs()`` is not cached yet and returns
    modality -> FeatureStore. Training and ``mmit.eval --feature-cache`` both come here, so both
    read one cache for one encoder. ``fingerprints`` (modality -> the encoder's fingerprint, a hash
    of all its weights): kept by a caller that asks for several sets' stores, so that each encoder
    is hashed once."""
    from mmit.data.collate import DECODERS
    from mmit.data.features import build_feature_cache, fingerprint, fingerprint_id

    if not cfg.get("feature_cache") or not model.encoders:
        return {}
    stores, fingerprints = {}, {} if fingerprints is None else fingerprints
    for kind, group in ENCODER_GROUPS.items():
        if kind not in model.encoders:
            continue
        if cfg.tuning[group] != "frozen":
            if cfg.feature_cache != "auto":
                raise ValueError(f"feature_cache needs a frozen {group}, but tuning.{group}={cfg.tuning[group]}")
            log.info(
                "feature cache: %s media run their encoder every step (tuning.%s=%s: its outputs change)",
                kind,
                group,
                cfg.tuning[group],
            )
            continue
        encoder, config = model.encoders[kind], OmegaConf.to_container(cfg[group], resolve=True)
        if kind == "video":  # a clip's features also depend on how its frames are sampled and pooled
            config = {**config, "video": OmegaConf.to_container(cfg.video, resolve=True)}
        if kind not in fingerprints:
            fingerprints[kind] = fingerprint(kind, encoder, config)
        fp = fingerprints[kind]
        if cfg.feature_cache == "auto":
            root = cache_dir("features") / f"{kind}-{fingerprint_id(fp)}"
        else:
            root = Path(cfg.feature_cache) / kind
        stores[kind] = build_feature_cache(
            root, kind, encoder, config, refs(), DECODERS[kind], device=device, expected=fp
        )
    return stores


@dataclass
class TrainingBatches:
    """What the loop trains on: this process's endless stream of ready batches (``state()`` /
    ``load_state()`` resume it exactly; ``close()`` stops its prefetch thread), and the collator
    that made them, with which evaluation batches its sets."""

    stream: object
    collate: Collator
    pack_length: int  # as resolved for this run: 0 when padded
    pool: ProcessPoolExecutor | None = None  # decode workers, when the stream has them

    def close(self) -> None:
        if hasattr(self.stream, "close"):
            self.stream.close()
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def build_training_batches(
    cfg: TrainerConfig,
    model: MultimodalLM,
    tokenizer,
    train_set: TokenizedDataset | StreamedDataset,
    features: dict[str, FeatureStore] | None = None,
    d: Dist | None = None,
) -> TrainingBatches:
    """The training set's batches for this process (``d``, the run's ``distributed.setup()``): in the
    loader's seeded, length-grouped order, media decoded or read from the feature caches, each batch
    packed where ``trainer.pack_length`` says (``mmit.training.packing``) and prepared ahead in a
    thread with ``trainer.prefetch``, the media of up to that many batches decoded at once in
    ``trainer.decode_workers`` processes where any are decoded at all (not all from a cache)."""
    from mmit.data.collate import collator_for, decode_pool
    from mmit.data.loader import Prefetch, batch_stream
    from mmit.training.distributed import Dist
    from mmit.training.packing import PackedBatches, min_saving_for, resolve_pack_length

    d = d or Dist()
    collate = collator_for(model, tokenizer, features)
    decoded = sorted(set(collate.preprocess) - set(collate.features))  # modalities decoded every step
    pool = None
    if cfg.decode_workers and decoded:
        pool = decode_pool({kind: collate.preprocess[kind] for kind in decoded}, cfg.decode_workers)
        log.info("%s decoded in %d worker processes", " and ".join(decoded), cfg.decode_workers)
    per_step = cfg.batch_size * d.world_size
    if hasattr(train_set, "__len__") and len(train_set) < per_step:  # streamed data have no length
        log.warning(
            "trainer.batch_size=%d%s is more than the %d training samples: each step takes all %d",
            cfg.batch_size,
            f" x {d.world_size} processes" if d.world_size > 1 else "",
            len(train_set),
            len(train_set),
        )
    stream = batch_stream(
        train_set,
        collate.with_pool(pool) if pool else collate,
        cfg.batch_size,
        cfg.seed,
        cfg.group_by_length,
        rank=d.rank,
        world_size=d.world_size,
    )
    pack_length = resolve_pack_length(cfg.pack_length, train_set.tokenize.max_length, model, cfg.compile)
    if pack_length:
        stream = PackedBatches(stream, pack_length, tokenizer.pad_token_id, min_saving_for(cfg.pack_length))
    if cfg.prefetch:
        stream = Prefetch(stream, max(cfg.prefetch, cfg.decode_workers if pool else 0))
    return TrainingBatches(stream, collate, pack_length, pool)


def build_trainer_config(cfg: DictConfig) -> TrainerConfig:
    trainer = instantiate(cfg.trainer, _convert_="all")
    max_length = cfg.data.get("max_length")
    if trainer.pack_length and max_length and trainer.pack_length < max_length:
        raise ValueError(
            f"trainer.pack_length={trainer.pack_length} is shorter than data.max_length={max_length}: "
            "a sample must fit in one packed row"
        )
    return trainer


def instantiate_source(cfg: DictConfig):
    """A dataset recipe's annotation reader (or its ``prepare`` step)."""
    return instantiate(cfg, _convert_="all")


def resolved_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
