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
        "manifest": "2cdbe21f5e1d2157b9dd244aa9f600b3e519bc586e4ba548a0f19e2db214f8db",
        "shards": {
            "train/shard-000000.json": "164d89ce96226eb93abeb8e7839671282e67ad5ed3714d374ce28fd061e91044",
            "train/shard-000000.tar": "a2c81ddf366dfec4b55842b9caa0b7eda01c3c3b6a5766c29b9a409ff2ee3641",
            "train/shard-000001.json": "4075415f697e6d7bf4fbccbff20ab71ded942c3da89f7df81421dbfd96ee0bf6",
            "train/shard-000001.tar": "efcd3b0e1129afe6df2a9de9f630639946645c8c0ce1cda916150fb53f92d32a",
            "val_heldout_tasks/shard-000000.json": "fdfd2f54e518628de19b619bf55cf2a4a4913267e4dadf70d37c4484bf731d4b",
            "val_heldout_tasks/shard-000000.tar": "66f3c43acef5e6b259929c3a752d3f694d64af633def0ba6b47420ab724232e6",
            "val_heldout_templates/shard-000000.json": "8c3e813b622b4c48b54124a3629642d44724bae1af5b4be23cae63fafc65dc19",
            "val_heldout_templates/shard-000000.tar": "5fd005f1810fac2d8d35c2abd540b2a67216b402367198190aa06d9419221246",
            "val_seen/shard-000000.json": "6d02a12cfa4b06b879dc8cca8538f06da941298f7e501ede1f8e825fe0665069",
            "val_seen/shard-000000.tar": "90a86581c513f31073660da18bf46206c57d4ca834e6f37cfc3af5226a87546f",
        },
    },
    "skip_resize_unshared": {
        "manifest": "110d02d2deef05411b069d5111ca0225cd0f071bc697558f484717ed1fec96d6",
        "shards": {
            "train/shard-000000.json": "262caec4ce2fd4ee9443c60601fd2b70717f3115aa2534f70731e6dbd81cebfa",
            "train/shard-000000.tar": "aea38ed8351dae83c9c0bf2f7b230ba20d091f05f96dc1601862ca7d483f8b02",
            "train/shard-000001.json": "d61624b5444643cb84bbfc0eb878a73d50b3c8badd91c6b5cc5f8338f00ea14a",
            "train/shard-000001.tar": "758c27dc97e6ce3bed573f0d957a18c320c4bfc425cea4bfb393afba4229dc37",
            "val_heldout_tasks/shard-000000.json": "fdfd2f54e518628de19b619bf55cf2a4a4913267e4dadf70d37c4484bf731d4b",
            "val_heldout_tasks/shard-000000.tar": "2c0d1032d0e853fd4f3660a26a8f2e4bc4f3c71966fe08afb955c817805c9c7e",
            "val_heldout_templates/shard-000000.json": "386e130400e601fad36f3ef05c8483e9ffbe4ae4b7dba127e8475565c03b804b",
            "val_heldout_templates/shard-000000.tar": "53502db82c6decb40a7e569f74317d41f0227dbc74c955915dc3f941167878f5",
            "val_seen/shard-000000.json": "75a46e9e03e0782701d899ecea355fa051d7bd3ea8475556c55b4e9260c9fcaa",
            "val_seen/shard-000000.tar": "9fd11094eb4d9b4ae1083106ffed4f7b26ad3d9cf99cb0ec953de22c83bbe0f5",
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
