"""Shared fixtures: a private mmit cache, no hub access, and Hydra composition."""

from __future__ import annotations

import importlib.util
import os
import random
import sys
import tempfile
from pathlib import Path

import pytest

# Before anything imports mmit or transformers: a fresh cache per test session, and no hub.
os.environ["MMIT_CACHE"] = tempfile.mkdtemp(prefix="mmit-test-cache-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# Every test starts from the same random state, whatever ran before it in its worker: with
# `-n 2 --dist loadfile` the files a worker runs first differ from run to run, and a test drawing
# from torch's global generator saw a different draw each time. MMIT_TEST_SEED picks another
# state, to look for tests that pass for one draw only.
TEST_SEED = int(os.environ.get("MMIT_TEST_SEED", "0"))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Seeds python's, numpy's and torch's generators before the test's fixtures are set up."""
    import numpy
    import torch

    random.seed(TEST_SEED)
    numpy.random.seed(TEST_SEED)
    torch.manual_seed(TEST_SEED)


@pytest.fixture
def compose():
    """compose(overrides) -> the training config, as `python -m mmit.train` would build it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from mmit.paths import CONF_DIR

    def _compose(overrides=()):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name="train", overrides=list(overrides))

    return _compose


TOOLS = Path(__file__).resolve().parents[1] / "tools"
# As for a script run from tools/: the benchmarks' package, tools/bench/, imports as `bench`.
sys.path.insert(0, str(TOOLS))


def load_tool(name: str):
    """A script of tools/ as a module (registered in sys.modules: dataclasses look their module up)."""
    path = TOOLS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tool():
    """tool(name) -> tools/<name>.py loaded as a module."""
    loaded = []

    def _load(name: str):
        loaded.append(name)
        return load_tool(name)

    yield _load
    for name in loaded:
        sys.modules.pop(name, None)


@pytest.fixture(scope="session")
def build_tiny_multimodal():
    """Builds a tiny LLM + tiny CLIP tower + MLP projector, wired as mmit does: (model, tokenizer, slot)."""

    def build():
        from mmit.data.samples import MediaSlot
        from mmit.models.encoders import tiny_clip_encoder
        from mmit.models.llm import load_tiny
        from mmit.models.multimodal_lm import MultimodalLM
        from mmit.models.projectors import build_projector
        from mmit.models.tuning import apply_tuning

        loaded = load_tiny()
        encoder = apply_tuning(tiny_clip_encoder(), "frozen")
        projector = build_projector("mlp", encoder.output_dim, loaded.model.config.hidden_size)
        loaded.tokenizer.add_tokens(["<image>"], special_tokens=True)
        slot = MediaSlot("<image>", loaded.tokenizer.convert_tokens_to_ids("<image>"), encoder.num_tokens)
        model = MultimodalLM(loaded.model, {"image": encoder}, {"image": projector}, {"image": slot}).eval()
        return model, loaded.tokenizer, slot

    return build


@pytest.fixture(scope="session")
def tiny():
    """The tiny preset LLM and tokenizer (built once per session, loaded from its directory)."""
    from mmit.models.llm import load_tiny

    return load_tiny()


@pytest.fixture(scope="session")
def tiny_vqa_run(tmp_path_factory):
    """One tiny trained vision run shared by the eval, chat, export and web-demo tests.

    Four steps of the tiny VQA recipe (tiny CLIP tower + MLP projector + tiny Llama with LoRA)
    on 40 demo images, checkpoints at steps 2 and 4, in-loop evaluation at step 2. Tests only
    read it (they may add an ``eval/`` folder). Returns (run dir, the overrides used).
    """
    from mmit.inference import compose_config
    from mmit.train import run

    root = tmp_path_factory.mktemp("tiny-vqa")
    overrides = [
        "+recipe=vqa_tiny",
        "trainer.max_steps=4",
        "trainer.eval_every=2",
        "trainer.save_every=2",
        "trainer.log_every=1",
        "trainer.batch_size=4",
        "trainer.generate_samples=4",
        "trainer.eval_batch_size=3",  # answers in batches of 3 and 1: more than one batch per set
        "trainer.eval_batches=1",
        "trainer.precision=fp32",
        f"data.source.overrides=['prepare.n_images=40','out_dir={root}/demo','prepare.out_dir={root}/demo-src']",
    ]
    run(compose_config(overrides), root / "run")
    return root / "run", overrides
