"""Shared fixtures (offline settings, tiny models, the char tokenizer); the helpers live in testing_utils.py."""

from __future__ import annotations

import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.path.isdir(_d := f"{os.path.dirname(__file__)}/../../shared/data") and os.environ.setdefault("SLOWED_DATA_DIR", _d)

import pytest  # noqa: E402

import slowed_peft  # noqa: E402,F401  (registers the SLOWED PEFT type)

from testing_utils import FAMILIES, build_char_tokenizer, build_tiny  # noqa: E402


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture
def tiny_model(family, tmp_path):
    path = tmp_path / f"tiny-{family}"
    return build_tiny(family, path), str(path)


@pytest.fixture
def tiny_llama(tmp_path):
    path = tmp_path / "tiny-llama"
    return build_tiny("llama", path), str(path)


@pytest.fixture
def char_tokenizer():
    return build_char_tokenizer()


@pytest.fixture
def tiny_dir(tmp_path):
    """A saved tiny Llama with the char tokenizer (a folder a recipe can load by path)."""
    path = tmp_path / "tiny"
    build_tiny("llama", path)
    build_char_tokenizer(path)
    return str(path)
