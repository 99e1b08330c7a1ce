"""What a build's folder says about it: ``build.json`` stamps the fingerprint of the recipe and mmit
version it is being built from (so another recipe's build is never mistaken for this one), and
``manifest.json``, written last, holds the recipe, source hashes, skips and per-set counts."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

import mmit
from mmit.cli import some
from mmit.data.recipes import BuildError, template_paths
from mmit.paths import LOCK_FILE, RECIPES_DIR, atomic_write_text


def build_fingerprint(cfg: DictConfig) -> str:
    """What a build's shards depend on: the resolved recipe, the content of its template files (an
    edited wording is another build) and the mmit version (the shard format)."""
    templates = "".join(f"{path} {digest}\n" for path, digest in template_hashes(cfg).items())
    text = f"mmit {mmit.__version__}\n{OmegaConf.to_yaml(cfg, resolve=True)}{templates}"
    return hashlib.sha256(text.encode()).hexdigest()


def template_hashes(cfg: DictConfig) -> dict[str, str]:
    """The sha256 of each template file the recipe names."""
    hashes = {}
    for path in template_paths(cfg):
        if not os.path.isfile(path):
            raise BuildError(f"templates: {path} is not a file")
        hashes[path] = file_sha256(Path(path))
    return hashes


def stamp_build(out: Path, fingerprint: str) -> None:
    atomic_write_text(out / "build.json", json.dumps({"fingerprint": fingerprint}))


def built_from_another(out: Path, fingerprint: str, cfg: DictConfig | None = None) -> bool:
    """Whether ``out`` holds a build (finished or not) with another fingerprint: of another recipe,
    settings or mmit version; a folder holding no file but the stamp (empty folders aside) is free
    again. A finished build stamped before recipes were merged over ``data_recipes/base.yaml`` (its
    fingerprint covered only the keys its recipe set) counts as the same build when its manifest's
    recipe, with the base's defaults filled in, is ``cfg`` and its mmit version and template files
    this one's; it is stamped again rather than built again."""
    stamp = out / "build.json"
    if not stamp.exists() or json.loads(stamp.read_text())["fingerprint"] == fingerprint:
        return False
    if not any(p.is_file() and p not in (stamp, out / LOCK_FILE) for p in out.rglob("*")):
        return False  # a build that stopped before writing a file (a bad record under on_error=raise)
    if cfg is None or cfg.get("mode") or not (out / "manifest.json").is_file():
        return True
    manifest = json.loads((out / "manifest.json").read_text())
    if manifest.get("mmit_version") != mmit.__version__ or manifest.get("templates") != template_hashes(cfg):
        return True
    base = OmegaConf.load(RECIPES_DIR / "base.yaml")
    earlier = OmegaConf.to_container(OmegaConf.merge(base, manifest.get("config") or {}), resolve=True)
    if earlier != OmegaConf.to_container(cfg, resolve=True):
        return True
    stamp_build(out, fingerprint)
    return False


def check_not_foreign(out: Path) -> None:
    """BuildError if ``out`` holds files and no build: the data folder itself, say, where a build
    would write its sets among the user's files."""
    if (out / "build.json").exists() or not out.is_dir():
        return
    others = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE)
    if others:
        raise BuildError(
            f"{out} holds files that are not an mmit build ({some(others)}); choose a new or empty output folder"
        )


def claim_out_dir(cfg: DictConfig) -> Path:
    """The recipe's ``out_dir``, created and stamped with the build's fingerprint; BuildError if it
    holds a build of another recipe, settings or mmit version."""
    out, fingerprint = Path(cfg.out_dir), build_fingerprint(cfg)
    if built_from_another(out, fingerprint, cfg):
        raise BuildError(
            f"{out} holds a build of a different recipe, settings or mmit version"
            f"{'' if (out / 'manifest.json').is_file() else ' (unfinished: no manifest.json)'}; "
            "choose another output directory, or delete this one"
        )
    out.mkdir(parents=True, exist_ok=True)
    stamp_build(out, fingerprint)
    return out


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_hashes(cfg: DictConfig) -> dict[str, str]:
    """The sha256 of every file a recipe's annotation sources name."""
    hashes = {}
    for source in [*(cfg.get("sources") or []), *(cfg.get("heldout_sources") or [])]:
        for key, value in source.items():
            if key != "_target_" and isinstance(value, str) and os.path.isfile(value):
                hashes[value] = file_sha256(Path(value))
    return hashes


def recipe_manifest(cfg: DictConfig, sources: dict[str, str], skipped: dict, sets: dict[str, list[dict]]) -> dict:
    """What ``mmit.build`` and ``mmit.synth`` manifests hold: version, recipe, seed, config, source
    hashes, skipped annotations by reason and the per-set summary of the shards' stats."""
    return {
        "mmit_version": mmit.__version__,
        "recipe": cfg.get("name", ""),
        "seed": cfg.seed,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "sources": sources,
        "templates": template_hashes(cfg),
        "skipped_annotations": dict(sorted(skipped.items())),
        "sets": summarize_sets(sets),
    }


def write_manifest(out: Path, manifest: dict) -> dict:
    """``manifest.json``, written last: a build without one is unfinished."""
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def summarize_sets(sets: dict[str, list[dict]]) -> dict[str, dict]:
    """The manifest's per-set entries from the stats of each set's shards (each with its ``shard`` name)."""
    summary = {}
    for name, stats in sets.items():
        merged = {
            key: dict(sorted(sum((Counter(s.get(key, {})) for s in stats), Counter()).items()))
            for key in ("by_task", "by_template", "by_source", "skipped", "long_audio")
        }
        summary[name] = {
            "samples": sum(s["samples"] for s in stats),
            "records": sum(s.get("records", s["samples"]) for s in stats),  # shards of mmit 0.1.0: one each
            "bytes": sum(s["bytes"] for s in stats),
            "shards": sorted(s["shard"] for s in stats),
            **merged,
        }
    return summary


def format_manifest(manifest: dict, out: Path) -> str:
    """The summary a build prints: per set, its samples, shards, size and tasks; then what was skipped."""
    lines = [f"built {manifest['recipe']} into {out}"]
    for name, s in manifest["sets"].items():
        tasks = ", ".join(f"{k} {v}" for k, v in s["by_task"].items())
        lines.append(
            f"  {name:<22} {s['samples']:>7} samples  {len(s['shards']):>3} shards  "
            f"{s['bytes'] / 1e6:8.1f} MB  ({tasks})"
        )
        if s["skipped"]:
            lines.append(f"  {'':<22} skipped: {s['skipped']}")
        if s.get("long_audio"):
            lines.append(f"  {'':<22} samples with clips longer than audio.max_seconds: {s['long_audio']}")
    if manifest["skipped_annotations"]:
        lines.append(f"  skipped annotations: {manifest['skipped_annotations']}")
    return "\n".join(lines)
