"""Pruned greedy decoding returns exactly greedy ``generate``'s tokens, and really drops finished rows."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GenerationConfig

from slowed_peft.eval.decoding import greedy_decode_pruned, supports_pruned_decoding
from slowed_peft.eval.generation import generate_ids, left_pad

from testing_utils import VOCAB, build_char_tokenizer


def _forward_takes_cache() -> bool:
    from transformers import LlamaForCausalLM

    from slowed_peft.eval.decoding import forward_parameters

    return "cache" in forward_parameters(LlamaForCausalLM)


# The pruned / shared-prefix decoders drive the model's forward with transformers' ``cache`` argument (5.2x); older
# releases name it ``past_key_values``, and the package then falls back to ``generate`` (the generate_ids tests
# below check the tokens on either path). These tests exercise the fast path itself.
needs_cache_api = pytest.mark.skipif(
    not _forward_takes_cache(), reason="this transformers' forward has no `cache` argument: generate is used instead"
)


MAX_NEW = 12


def _prompts(rows: int = 6, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = [3 + (5 * i) % 9 for i in range(rows)]  # ragged: left padding and position ids matter
    return left_pad([torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lengths], pad_id=0)


def _reference(model, ids, mask, eos: list[int], max_new: int = MAX_NEW) -> list[list[int]]:
    cfg = GenerationConfig(
        max_new_tokens=max_new, do_sample=False, num_beams=1, eos_token_id=eos or None, pad_token_id=0
    )
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)[:, ids.shape[1] :].tolist()
    return [row[: next((j + 1 for j, t in enumerate(row) if t in eos), len(row))] for row in out]


def _staggered_eos(model, ids, mask) -> list[int]:
    """EOS ids that end the rows at different steps: the tokens some rows emit at steps 1, 4 and 8 without EOS."""
    free = _reference(model, ids, mask, eos=[])
    return sorted({free[0][1], free[2][4], free[4][8]})


@needs_cache_api
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_pruned_equals_generate_and_drops_rows(family, tmp_path):
    from testing_utils import build_tiny

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


@needs_cache_api
def test_pruned_through_peft_adapter(tiny_llama):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(
        copy.deepcopy(tiny_llama[0]), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    ).eval()
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
    slow = generate_ids(model, tok, prompts, max_new_tokens=10, batch_size=3, show_progress=False, prune_finished=False)
    assert fast == slow


@needs_cache_api
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
    expected = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)[:, ids.shape[1] :].tolist()
    assert [c for _, c in got] == [
        r[: next((j + 1 for j, t in enumerate(r) if t == tok.eos_token_id), len(r))] for r in expected
    ]


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


# ------------------------------------------------------------------------------------------- shared prefix


def _shared_prefix_batch(prefix_len: int = 10, seed: int = 7) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(3, VOCAB, (prefix_len,), generator=g).tolist()
    return [prefix + torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (1, 4, 7, 2, 5, 3)]


def test_common_prefix_length_and_prefix_pad():
    from slowed_peft.eval.decoding import common_prefix_length, prefix_pad

    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert common_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2  # each row keeps a token after the prefix
    assert common_prefix_length([[1, 2, 3]]) == 0 and common_prefix_length([[5, 1], [6, 1]]) == 0
    ids, mask = prefix_pad([[7, 8, 1], [7, 8, 2, 3, 4]], pad_id=0, prefix=2)
    assert ids.tolist() == [[7, 8, 0, 0, 1], [7, 8, 2, 3, 4]]
    assert mask.tolist() == [[1, 1, 0, 0, 1], [1, 1, 1, 1, 1]]


@needs_cache_api
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_shared_prefix_prefilled_once_same_tokens(family, tmp_path):
    """The shared prefix runs once with batch 1 and the continuations equal generate's on the left-padded batch."""
    from slowed_peft.eval.decoding import common_prefix_length, prefix_pad

    from testing_utils import build_tiny

    model = build_tiny(family, tmp_path / family)
    batch = _shared_prefix_batch()
    prefix = common_prefix_length(batch)
    assert prefix == 10
    left_ids, left_mask = left_pad(batch, pad_id=0)
    eos = _staggered_eos(model, left_ids, left_mask)
    reference = _reference(model, left_ids, left_mask, eos)
    ids, mask = prefix_pad(batch, 0, prefix)
    widths: list[tuple[int, int]] = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, a, out: widths.append(tuple(a[0].shape)))
    try:
        got = greedy_decode_pruned(model, ids, mask, MAX_NEW, eos, shared_prefix=prefix)
    finally:
        hook.remove()
    assert got == reference
    assert widths[0] == (1, prefix) and widths[1] == (len(batch), ids.shape[1] - prefix)


def test_shared_prefix_rejects_rows_that_differ(tiny_llama):
    ids, mask = left_pad(_shared_prefix_batch(), pad_id=0)  # left padding: the first tokens are padding
    with pytest.raises(ValueError, match="shared_prefix=10: the first 10 tokens differ"):
        greedy_decode_pruned(tiny_llama[0], ids, mask, 4, [1], shared_prefix=10)
    with pytest.raises(ValueError, match="shared_prefix must be >= 0, got -1"):
        greedy_decode_pruned(tiny_llama[0], ids, mask, 4, [1], shared_prefix=-1)


def test_generate_ids_same_tokens_with_and_without_prefix_sharing(tiny_model):
    """Chat-template-like shared prefix (>= 8 tokens): every family gives the same tokens either way."""
    model, _ = tiny_model
    tok = build_char_tokenizer()
    system = "Be careful. "
    prompts = [system + p for p in ("Hi", "Bake bread?", "x", "A joke on cats.", "ok")]
    shared = generate_ids(model, tok, prompts, max_new_tokens=10, batch_size=5, show_progress=False)
    plain = generate_ids(model, tok, prompts, max_new_tokens=10, batch_size=5, show_progress=False, share_prefix=False)
    assert shared == plain
