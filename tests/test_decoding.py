"""Pruned greedy decoding returns exactly greedy ``generate``'s tokens, and really drops finished rows."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import VOCAB, build_char_tokenizer
from transformers import GenerationConfig

from slowed_peft.eval.decoding import greedy_decode_pruned, supports_pruned_decoding
from slowed_peft.eval.generation import generate_ids, left_pad

MAX_NEW = 12


def _prompts(rows: int = 6, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = [3 + (5 * i) % 9 for i in range(rows)]  # ragged: left padding and position ids matter
    return left_pad([torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lengths], pad_id=0)


def _reference(model, ids, mask, eos: list[int], max_new: int = MAX_NEW) -> list[list[int]]:
    cfg = GenerationConfig(max_new_tokens=max_new, do_sample=False, num_beams=1, eos_token_id=eos or None,
                           pad_token_id=0)
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)[:, ids.shape[1]:].tolist()
    return [row[: next((j + 1 for j, t in enumerate(row) if t in eos), len(row))] for row in out]


def _staggered_eos(model, ids, mask) -> list[int]:
    """EOS ids that end the rows at different steps: the tokens some rows emit at steps 1, 4 and 8 without EOS."""
    free = _reference(model, ids, mask, eos=[])
    return sorted({free[0][1], free[2][4], free[4][8]})


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_pruned_equals_generate_and_drops_rows(family, tmp_path):
    from conftest import build_tiny

    model = build_tiny(family, tmp_path / family)
    ids, mask = _prompts()
    eos = _staggered_eos(model, ids, mask)
    reference = _reference(model, ids, mask, eos)
    lengths = [len(r) for r in reference]
    assert min(lengths) < MAX_NEW and len(set(lengths)) >= 2  # the case pruning is for
    assert supports_pruned_decoding(model, GenerationConfig(max_new_tokens=MAX_NEW, do_sample=False))

    rows_seen: list[int] = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, a, out: rows_seen.append(a[0].shape[0]))
    try:
        pruned = greedy_decode_pruned(model, ids, mask, MAX_NEW, eos)
    finally:
        hook.remove()
    assert pruned == reference
    assert rows_seen[0] == ids.shape[0] and rows_seen[-1] < ids.shape[0]  # finished rows left the batch
    assert rows_seen == sorted(rows_seen, reverse=True)
    assert len(rows_seen) == max(lengths)  # no step after the last row ended


def test_pruned_through_peft_adapter(tiny_llama):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(copy.deepcopy(tiny_llama[0]),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)).eval()
    ids, mask = _prompts(seed=5)
    eos = _staggered_eos(model, ids, mask)
    assert supports_pruned_decoding(model, GenerationConfig(max_new_tokens=MAX_NEW, do_sample=False))
    assert greedy_decode_pruned(model, ids, mask, MAX_NEW, eos) == _reference(model, ids, mask, eos)


def test_generate_ids_same_tokens_with_and_without_pruning(tiny_model):
    """Every family (BLOOM and GPT-2 may fall back to ``generate``) gives the same tokens either way."""
    model, _ = tiny_model
    tok = build_char_tokenizer()
    prompts = ["Hello", "How do I bake bread quickly?", "x", "Tell me a joke about cats, please.", "ok"]
    fast = generate_ids(model, tok, prompts, max_new_tokens=10, batch_size=3, show_progress=False)
    slow = generate_ids(model, tok, prompts, max_new_tokens=10, batch_size=3, show_progress=False,
                        prune_finished=False)
    assert fast == slow


def test_model_generation_defaults_force_generate(tiny_llama):
    """A repetition penalty in the model's own generation config adds a logits processor: no pruned path."""
    model = copy.deepcopy(tiny_llama[0])
    plain = GenerationConfig(max_new_tokens=4, do_sample=False)
    assert supports_pruned_decoding(model, plain)
    model.generation_config.repetition_penalty = 1.3
    assert not supports_pruned_decoding(model, plain)
    tok = build_char_tokenizer()
    prompts = ["Hello there", "abc"]
    got = generate_ids(model, tok, prompts, max_new_tokens=8, batch_size=2, show_progress=False)
    ids, mask = left_pad([p for p, _ in got], pad_id=0)
    cfg = GenerationConfig(max_new_tokens=8, do_sample=False, eos_token_id=[tok.eos_token_id], pad_token_id=0)
    expected = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)[:, ids.shape[1]:].tolist()
    assert [c for _, c in got] == [r[: next((j + 1 for j, t in enumerate(r) if t == tok.eos_token_id), len(r))]
                                   for r in expected]


def test_pruned_rejects_zero_tokens(tiny_llama):
    ids, mask = _prompts(rows=2)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1, got 0"):
        greedy_decode_pruned(tiny_llama[0], ids, mask, 0, [1])


def test_logits_from_equals_sliced_full_logits(tiny_model):
    from slowed_peft.eval.generation import logits_from

    model, _ = tiny_model
    ids, mask = _prompts(rows=3)
    full = model(input_ids=ids, attention_mask=mask).logits
    for first in (0, 4, ids.shape[1] - 1):
        assert torch.allclose(logits_from(model, ids, mask, first), full[:, first:], atol=1e-5)
    width = ids.shape[1]
    with pytest.raises(ValueError, match=rf"first must be in \[0, {width}\), got {width}"):
        logits_from(model, ids, mask, width)
