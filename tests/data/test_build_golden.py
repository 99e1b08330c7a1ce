"""The build's output, pinned: tiny demo_vqa builds give shards with these exact bytes and
manifests with these exact counts, with one worker or a pool. A refactor of the build must leave
both unchanged; a change meant to change them (the shard format, shaping) updates the digests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from mmit.build import build, compose_recipe
from mmit.data.demo.scenes import write_demo_scenes

CASES = {
    # name -> overrides of demo_vqa (24 images), and whether one image is broken first
    "demo": (["shard_size=40"], False),
    "skip_resize_unshared": (["shard_size=30", "on_error=skip", "resize_max=40", "share_media=false"], True),
}

# case -> the sha256 of each shard file (by path under out_dir) and of the stable manifest
GOLDEN: dict[str, dict] = {
    "demo": {
        "manifest": "50bf49046cfa7859074e95e2de1dd09144ea2fb6747475271f96964f34a38a84",
        "shards": {
            "train/shard-000000.json": "68ca5af3df9880d7eb62dafbbacffca2fa3abf67af6039408d6e69c026f43cb7",
            "train/shard-000000.tar": "2cf681de0a519be1b26a8de08699b63616bc6eda612a97a05cee22b93689a933",
            "train/shard-000001.json": "e85176e62342c4caa31d806c1c85ad04bcfd9c375d9356d600617982b1c87208",
            "train/shard-000001.tar": "cc5057b9beb4068baf16a16a9ff986c2e089f39d96052848bac8151c34b30153",
            "val_heldout_tasks/shard-000000.json": "fdfd2f54e518628de19b619bf55cf2a4a4913267e4dadf70d37c4484bf731d4b",
            "val_heldout_tasks/shard-000000.tar": "66f3c43acef5e6b259929c3a752d3f694d64af633def0ba6b47420ab724232e6",
            "val_heldout_templates/shard-000000.json": "b35eeda0e79f3bb8f0619bbddeedb4d5e2e9a0ede9d7711af462d097ccdd0ed3",
            "val_heldout_templates/shard-000000.tar": "013cc8c60a722728476bf991492e808ac178ed42afb4f419ba22a73afe7f3e85",
            "val_seen/shard-000000.json": "9fad00ce46fcbb69df402b495f9c31bdbccb38b3420dcc3201abfc826344737a",
            "val_seen/shard-000000.tar": "510dd8bb6fe457be9761830ada1128b59e2fd29bf95eb0bfce0a8ce5bfbcbce1",
        },
    },
    "skip_resize_unshared": {
        "manifest": "e9a4a0f8d50c57384ab8e90535b35e75a8edb3a9f7b4ab4b74cf2a14e452f9e4",
        "shards": {
            "train/shard-000000.json": "5c502f77418aa2a3c284c8b921be389a8f0f47dd933aa441c106c8cedf23644d",
            "train/shard-000000.tar": "88093167bbe57e454d92578c43f774164619221e4b19c69a86b44317a4aacfb6",
            "train/shard-000001.json": "717c97e6290f5763b7ff34c2cd3cca1eaeb1e9afd8b336ee77fd16697bd8e363",
            "train/shard-000001.tar": "40a303e4fe0ee7fb3b832c50802edd775175a4b650862aee4dc029012dabffa6",
            "val_heldout_tasks/shard-000000.json": "fdfd2f54e518628de19b619bf55cf2a4a4913267e4dadf70d37c4484bf731d4b",
            "val_heldout_tasks/shard-000000.tar": "2c0d1032d0e853fd4f3660a26a8f2e4bc4f3c71966fe08afb955c817805c9c7e",
            "val_heldout_templates/shard-000000.json": "6aa795a98aa4be0dfe698d89116c5243d52c4249d254a6fc581662f898bb87c5",
            "val_heldout_templates/shard-000000.tar": "ec29e9f1c498863c3b8d608d487b7dd2f0a15e3da1761f613932a0185c938758",
            "val_seen/shard-000000.json": "822bdd94b246d71e79f90d67d1267348b7546beabff334bc8d59811791263388",
            "val_seen/shard-000000.tar": "887a2c9b3f68bc03af2f2f4f6798ed8dd6c2bee4f4e98924931a73770ae6c809",
        },
    },
}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stable_manifest(manifest: dict) -> dict:
    """The manifest without what names the test's folders (paths, and the source files they key)
    or does not change the output (the number of workers)."""
    dropped = ("out_dir", "prepare", "sources", "num_workers")
    config = {k: v for k, v in manifest["config"].items() if k not in dropped}
    config["templates"] = Path(config["templates"]).name  # the checkout's own path
    return {
        "recipe": manifest["recipe"],
        "seed": manifest["seed"],
        "config": config,
        "source_digests": sorted(manifest["sources"].values()),
        "template_digests": sorted(manifest["templates"].values()),
        "skipped_annotations": manifest["skipped_annotations"],
        "sets": manifest["sets"],
    }


def golden_build(root: Path, case: str, workers: int) -> dict:
    """The digests of one case's shard files (tars and stats sidecars) and stable manifest."""
    overrides, broken = CASES[case]
    scenes, out = root / "scenes", root / "out"
    if broken:
        images = write_demo_scenes(scenes, n_images=24, seed=0, questions_per_image=8).images_dir
        (images / sorted(p.name for p in images.iterdir())[5]).write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    cfg = compose_recipe(
        "demo_vqa",
        [f"out_dir={out}", f"prepare.out_dir={scenes}", "prepare.n_images=24", f"num_workers={workers}", *overrides],
    )
    manifest = build(cfg)
    assert stable_manifest(json.loads((out / "manifest.json").read_text())) == stable_manifest(manifest)
    shards = {
        str(p.relative_to(out)): _digest(p.read_bytes())
        for p in sorted(out.rglob("shard-*"))
        if p.suffix in (".tar", ".json")
    }
    return {"shards": shards, "manifest": _digest(json.dumps(stable_manifest(manifest), sort_keys=True).encode())}


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_tiny_demo_build_gives_the_same_bytes(tmp_path, case, workers):
    assert golden_build(tmp_path, case, workers) == GOLDEN[case]
