"""Shared fixtures: a private mmit cache, no hub access, and Hydra composition."""

from __future__ import annotations

import os
import tempfile

import pytest

# Before anything imports mmit or transformers: a fresh cache per test session, and no hub.
os.environ["MMIT_CACHE"] = tempfile.mkdtemp(prefix="mmit-test-cache-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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


@pytest.fixture(scope="session")
def tiny():
    """The tiny preset LLM and tokenizer (built once per session, loaded from its directory)."""
    from mmit.models.llm import load_tiny

    return load_tiny()
