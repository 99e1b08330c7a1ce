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
        "manifest": "89272c63ca6ec99c568fa74d8d8e58cd45cccce40595f88b9b4e6737003489da",
        "shards": {
            "train/shard-000000.json": "3046885ea82685f041beb9dd41bf6e5a4cecce040c81f910a5089aef33ea541c",
            "train/shard-000000.tar": "cc215b160d781f57df286c096dcfa77d6beed3566446e041c94cb9a246313e31",
            "train/shard-000001.json": "e85176e62342c4caa31d806c1c85ad04bcfd9c375d9356d600617982b1c87208",
            "train/shard-000001.tar": "992e00e75563fe8258e7c707cdc6467ecd799d8b29ae11050f0ab3e5e241bed8",
            "val_heldout_tasks/shard-000000.json": "fdfd2f54e518628de19b619bf55cf2a4a4913267e4dadf70d37c4484bf731d4b",
            "val_heldout_tasks/shard-000000.tar": "66f3c43acef5e6b259929c3a752d3f694d64af633def0ba6b47420ab724232e6",
            "val_heldout_templates/shard-000000.json": "b35eeda0e79f3bb8f0619bbddeedb4d5e2e9a0ede9d7711af462d097ccdd0ed3",
            "val_heldout_templates/shard-000000.tar": "150e64622cb98ed79146793be67da6319aa88727547dce66b72feb6605335469",
            "val_seen/shard-000000.json": "ce551ebea0fcd23c426f9c3adc83116ffcbdafcb394e3b61b3b2b9cc418b11b5",
            "val_seen/shard-000000.tar": "570f1fc38d06ba422914ca10d6c468812d1c3a746905616dc17d5f33ccdeee11",
        },
    },
    "skip_resize_unshared": {
        "manifest": "ca46daa1f275bb0a35785d98ad0bd2012348f9b7f6aee6be26c337b8f641f01e",
        "shards": {
            "train/shard-000000.json": "622b141b11094dd170d77da4f4320bfebddb48471845606ee0ca4c79ab41b679",
            "train/shard-000000.tar": "993bcc032498f51481c8788be1dfda40fb74e1e0bd83b640e37b7a1bb631c9e2",
            "train/shard-000001.json": "717c97e6290f5763b7ff34c2cd3cca1eaeb1e9afd8b336ee77fd16697bd8e363",
            "train/shard-000001.tar": "811de1f00712171660d3e6a4b8612b4588c36ba2b13ac528a28fe8d167d59188",
            "val_heldout_tasks/shard-000000.json": "fdfd2f54e518628de19b619bf55cf2a4a4913267e4dadf70d37c4484bf731d4b",
            "val_heldout_tasks/shard-000000.tar": "2c0d1032d0e853fd4f3660a26a8f2e4bc4f3c71966fe08afb955c817805c9c7e",
            "val_heldout_templates/shard-000000.json": "6aa795a98aa4be0dfe698d89116c5243d52c4249d254a6fc581662f898bb87c5",
            "val_heldout_templates/shard-000000.tar": "d75110bdf385d5359556b36b48b2ea65f423d766968301f7eee4e773c5df9d37",
            "val_seen/shard-000000.json": "bbf59b3f21a2339019d4009119670e81e42980a04ec05dc37224173dca373497",
            "val_seen/shard-000000.tar": "0c3c0393f6a9a6f16c66800d21b61593d6d8cc10549974ca26932867e298cd63",
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
