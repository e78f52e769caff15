"""Shared fixtures (offline settings, tiny models, the char tokenizer); the helpers live in testing_utils.py.

The default tier runs on 2 pytest-xdist workers (``-n 2 --dist loadfile`` in pyproject.toml: a file's tests stay on
one worker, so module-scoped fixtures are built once). Each worker gets its share of the cores for torch's threads
(fresh interpreters the tests start inherit it through ``OMP_NUM_THREADS``), and the slow end-to-end runs that fill
the shared model cache (``~/.cache/slowed_peft``) take a lock (``shared_model_cache``) so two workers never build the
same cached model at once."""

from __future__ import annotations

import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.path.isdir(_d := f"{os.path.dirname(__file__)}/../../shared/data") and os.environ.setdefault("SLOWED_DATA_DIR", _d)

import pytest  # noqa: E402

import slowed_peft  # noqa: E402,F401  (registers the SLOWED PEFT type)

from testing_utils import FAMILIES, build_char_tokenizer, build_tiny  # noqa: E402


def pytest_configure(config):
    workers = getattr(config, "workerinput", {}).get("workercount")
    if workers:  # an xdist worker: 2 workers x 2 torch threads on 2 cores would oversubscribe (OpenMP spins)
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture
def shared_model_cache():
    """Hold a lock on the shared model cache (the converted embedded model, aligned students) for the whole test:
    end-to-end runs that may build the same cached model take turns instead of writing it twice at once."""
    from filelock import FileLock

    from slowed_peft.base_models import default_cache_root

    root = default_cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".pytest.lock")):
        yield root


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
