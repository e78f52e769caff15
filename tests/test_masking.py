"""Low-Entropy Masking units: entropy math, alignment, annotation (incl. caching) and the collator."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset, load_dataset
from transformers import LlamaConfig, LlamaForCausalLM

from slowed_peft import EntropyMaskingCollator, annotate_entropy, token_entropy
from slowed_peft.masking import fused, low_entropy_mask, model_token_entropy

from testing_utils import build_char_tokenizer


V = 8
PEAKED, UNIFORM = 0, 1  # after token 0 the next token is almost surely 3; after token 1 it is uniform


def controlled_model() -> LlamaForCausalLM:
    """No transformer layers: the next-token distribution depends only on the current token, and we set it."""
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=V,
        intermediate_size=8,
        num_hidden_layers=0,
        num_attention_heads=1,
        num_key_value_heads=1,
        tie_word_embeddings=False,
        rms_norm_eps=1e-12,
        pad_token_id=7,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(V))
        w = torch.zeros(V, V)
        w[:, PEAKED] = -30.0
        w[3, PEAKED] = 30.0
        model.lm_head.weight.copy_(w / math.sqrt(V))
    return model


# ------------------------------------------------------------------------------------------------ token_entropy
def test_token_entropy_matches_float64_reference_and_edge_cases():
    torch.manual_seed(0)
    z = torch.randn(3, 7, 500, dtype=torch.float64) * 3
    ref = -(z.softmax(-1) * z.log_softmax(-1)).sum(-1)
    for chunk in (None, 1, 4, 1000):
        out = token_entropy(z.float(), chunk_size=chunk)
        assert out.dtype == torch.float32 and out.shape == (3, 7)
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)
    assert torch.equal(token_entropy(torch.tensor([[0.0, -math.inf, -math.inf]])), torch.tensor([0.0]))
    one_hot = torch.full((2, 50), -1e4)
    one_hot[:, 3] = 1e4
    assert torch.equal(token_entropy(one_hot), torch.zeros(2))
    torch.testing.assert_close(token_entropy(torch.zeros(4, 150)), torch.full((4,), math.log(150)))
    masked = torch.randn(2, 40)
    masked[:, 10:] = -math.inf
    torch.testing.assert_close(token_entropy(masked), token_entropy(masked[:, :10]))
    for dtype in (torch.bfloat16, torch.float16):
        low = z.to(dtype)
        zd = low.double()
        ref_low = -(zd.softmax(-1) * zd.log_softmax(-1)).sum(-1)
        torch.testing.assert_close(token_entropy(low, chunk_size=5).double(), ref_low, atol=1e-5, rtol=0)
    assert torch.isnan(token_entropy(torch.full((1, 4), -math.inf))).all()


# ------------------------------------------------------------------------------------------------ alignment
def test_entropy_column_is_aligned_to_the_token_it_predicts():
    model = controlled_model()
    ids = [1, 0, 1, 0, 0, 1, 5]
    ds = annotate_entropy(Dataset.from_list([{"input_ids": ids, "labels": ids}]), model, batch_size=1)
    ent = ds[0]["token_entropy"]
    assert math.isnan(ent[0])  # nothing predicts the first token
    for t in range(1, len(ids)):
        expected = math.log(V) if ids[t - 1] == UNIFORM else 0.0
        assert ent[t] == pytest.approx(expected, abs=1e-4), t
    collator = EntropyMaskingCollator(pad_token_id=7, threshold=0.5)
    batch = collator([dict(ds[0])])
    expected_labels = [ids[0]] + [ids[t] if ids[t - 1] == UNIFORM else -100 for t in range(1, len(ids))]
    assert batch["labels"][0].tolist() == expected_labels
    # the live-model helper gives the same aligned entropies
    live = model_token_entropy(model, torch.tensor([ids]))[0]
    torch.testing.assert_close(live[1:], torch.tensor(ent[1:]), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------ annotate_entropy
def test_annotate_raw_prompt_completion_and_padding_invariance(tmp_path):
    tok = build_char_tokenizer()
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    rows = [{"prompt": "Q: 2+2?", "completion": " A: 4" * (i + 1)} for i in range(5)]
    ds = Dataset.from_list(rows)
    one = annotate_entropy(ds, model, tokenizer=tok, batch_size=1)
    many = annotate_entropy(ds, model, tokenizer=tok, batch_size=4)
    for a, b in zip(one, many):
        assert a["input_ids"] == tok(a["prompt"] + a["completion"] + tok.eos_token)["input_ids"]
        assert len(a["token_entropy"]) == len(a["input_ids"]) == len(a["completion_mask"])
        assert sum(a["completion_mask"]) == len(tok(a["completion"] + tok.eos_token)["input_ids"])
        torch.testing.assert_close(
            torch.tensor(a["token_entropy"][1:]), torch.tensor(b["token_entropy"][1:]), atol=1e-5, rtol=0
        )
    conv = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "yo"}]}]
    )
    out = annotate_entropy(conv, model, tokenizer=tok)[0]
    assert len(out["token_entropy"]) == len(out["input_ids"]) and sum(out["completion_mask"]) == len("yo</s>") - 3
    with pytest.raises(ValueError, match="no 'input_ids' column.*tokenizer"):
        annotate_entropy(ds, model)
    with pytest.raises(ValueError, match="empty"):
        annotate_entropy(ds.select([]), model, tokenizer=tok)


def test_annotate_reuses_the_datasets_cache(tmp_path):
    model = controlled_model()
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(f'{{"input_ids": [1, 0, 1, {i}]}}' for i in range(6)))
    ds = load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    calls = []
    handle = model.model.register_forward_hook(lambda *a: calls.append(1))
    first = annotate_entropy(ds, model, batch_size=2)
    assert len(calls) == 3
    again = annotate_entropy(ds, model, batch_size=2)
    assert len(calls) == 3  # same weights, same data: loaded from the cache, no forward
    assert [r[1:] for r in again["token_entropy"]] == [r[1:] for r in first["token_entropy"]]
    with torch.no_grad():
        model.lm_head.weight.mul_(0.5)  # other weights: recomputed
    annotate_entropy(ds, model, batch_size=2)
    assert len(calls) == 6
    handle.remove()


def test_annotate_large_vocabulary_without_full_logits():
    """150k vocabulary: TRL's tiled kernel gives the same entropies as full logits would."""
    vocab, seq = 151_936, 2048
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    ids = torch.randint(0, vocab, (1, seq))
    data = Dataset.from_list([{"input_ids": ids[0].tolist()}])
    peak = peak_rss_increase_mib(lambda: annotate_entropy(data, model))
    full_logits_mib = seq * vocab * 4 / 2**20  # 1187 MiB in float32
    assert peak < 0.4 * full_logits_mib, peak
    ds = annotate_entropy(data, model)
    with torch.no_grad():
        hidden = model.model(ids).last_hidden_state[0, :16]
        ref = token_entropy(model.lm_head(hidden))
    torch.testing.assert_close(torch.tensor(ds[0]["token_entropy"][1:17]), ref, atol=1e-4, rtol=0)


def peak_rss_increase_mib(fn) -> float:
    """Peak resident-memory increase while ``fn`` runs, sampled from /proc every 2 ms."""
    import os
    import threading
    import time

    def rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    base, peak, done = rss(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss() - base)
            time.sleep(0.002)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return peak[0]


# ------------------------------------------------------------------------------------------------ collator
def example(ids, ent, labels=None, **extra):
    return {"input_ids": ids, "labels": labels if labels is not None else list(ids), "token_entropy": ent, **extra}


def test_collator_threshold_only_masks_labelled_tokens_and_strips_helper_keys():
    c = EntropyMaskingCollator(pad_token_id=0, threshold=1.0)
    ex = example([5, 6, 7, 8, 9], [math.nan, 0.1, 0.2, 3.0, 0.5], labels=[-100, -100, 7, 8, 9], prompt="text")
    batch = c([ex, example([5, 6, 7], [math.nan, 2.0, 0.1])])
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["labels"].tolist() == [[-100, -100, -100, 8, -100], [5, 6, -100, -100, -100]]
    assert c.stats.masked == 3 and c.stats.candidates == 5  # position 0 never counts
    assert c.stats.pop_fraction() == pytest.approx(3 / 5) and c.stats.candidates == 0
    assert c.stats.pop_fraction() == pytest.approx(3 / 5)  # nothing new: the last value again


def test_collator_quantile_and_min_kept():
    c = EntropyMaskingCollator(pad_token_id=0, quantile=0.5)
    batch = c([example([1, 2, 3, 4, 5], [math.nan, 0.1, 0.2, 0.3, 0.4])])
    assert batch["labels"].tolist() == [[1, -100, -100, 4, 5]]  # median 0.25 of the 4 candidates (not position 0)
    floor = EntropyMaskingCollator(pad_token_id=0, threshold=10.0, min_kept=2)
    batch = floor([example([1, 2, 3, 4], [math.nan, 0.3, 0.9, 0.5]), example([1, 2], [math.nan, 0.2])])
    assert batch["labels"].tolist() == [[1, -100, 3, 4], [1, 2, -100, -100]]
    with pytest.raises(ValueError, match=r"quantile=0\.0"):  # it would mask nothing: almost surely a mistake
        EntropyMaskingCollator(pad_token_id=0, quantile=0.0)


def test_collator_truncates_entropy_with_input_ids():
    ex = example([1, 2, 3], [math.nan, 5.0, 0.0, 9.0, 9.0])  # TRL truncated input_ids/labels, not the column
    assert EntropyMaskingCollator(pad_token_id=0, threshold=1.0)([ex])["labels"].tolist() == [[1, 2, -100]]
    end = EntropyMaskingCollator(pad_token_id=0, threshold=1.0, truncation_mode="keep_end")
    assert end([example([1, 2, 3], [math.nan, 5.0, 0.0, 9.0, 0.5])])["labels"].tolist() == [[1, 2, -100]]


def test_collator_with_model_instead_of_column():
    model = controlled_model()
    c = EntropyMaskingCollator(pad_token_id=7, threshold=0.5, model=model)
    batch = c([{"input_ids": [1, 0, 1, 5]}, {"input_ids": [0, 1]}])
    # entropy predicting t is low iff token t-1 is 0 (PEAKED); the 2nd example's only candidate is kept (min_kept)
    assert batch["labels"].tolist() == [[1, 0, -100, 5], [0, 1, -100, -100]]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"threshold": -0.1}, "threshold=-0.1"),
        ({"quantile": 1.0}, "quantile=1.0"),
        ({"quantile": -0.2}, "quantile=-0.2"),
        ({"threshold": 0.5, "quantile": 0.3}, "exactly one"),
        ({}, "exactly one"),
        ({"threshold": 0.5, "min_kept": -1}, "min_kept=-1"),
        ({"threshold": 0.5, "padding_free": True}, "padding_free"),
    ],
)
def test_collator_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EntropyMaskingCollator(pad_token_id=0, **kwargs)


def test_collator_bad_data():
    c = EntropyMaskingCollator(pad_token_id=0, threshold=0.5)
    with pytest.raises(ValueError, match="example 1 has an entropy column of length 2 but 3 input_ids"):
        c([example([1, 2], [math.nan, 1.0]), example([1, 2, 3], [math.nan, 1.0])])
    with pytest.raises(ValueError, match=r"NaN entropy at a label position \(example 0, position 2\)"):
        c([example([1, 2, 3], [math.nan, 1.0, math.nan])])
    # a batch without label tokens contributes zero loss, as in plain SFT: nothing masked, nothing counted
    out = c([example([1, 2, 3], [math.nan, 1.0, 1.0], labels=[-100, -100, -100])])
    assert out["labels"].tolist() == [[-100, -100, -100]] and c.stats.candidates == 0
    with pytest.raises(ValueError, match="no 'token_entropy' column.*annotate_entropy"):
        c([{"input_ids": [1, 2]}])


def test_low_entropy_mask_never_empties_an_example():
    ent = torch.tensor([[0.0, 0.1, 0.2], [0.5, 0.6, 0.7]])
    cand = torch.tensor([[True, True, True], [True, True, False]])
    drop = low_entropy_mask(ent, cand, threshold=100.0, min_kept=1)
    assert drop.tolist() == [[True, True, False], [True, False, False]]


@pytest.mark.skipif(not fused.HAS_FUSED_HEAD, reason="TRL < 1.15: no fused head to compare with")
@pytest.mark.parametrize("shifted", [False, True])
def test_full_logits_outputs_equal_trls_fused_head(monkeypatch, shifted):
    """TRL < 1.15 has no fused head: ``token_outputs`` then reads the same fields (and log-prob gradient) from logits."""
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    model = LlamaForCausalLM(cfg)
    ids = torch.randint(0, 40, (2, 9))
    labels = ids.clone()
    labels[0, :4] = -100
    labels[1, 7:] = -100
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    inputs.update({"shift_labels": labels} if shifted else {"labels": labels})
    results = {}
    for has_head in (True, False):
        monkeypatch.setattr(fused, "HAS_FUSED_HEAD", has_head)
        if has_head:
            add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
        model.zero_grad()
        out = fused.token_outputs(model, dict(inputs))
        out.log_probs.sum().backward()
        grad = model.model.layers[0].mlp.up_proj.weight.grad.clone()
        results[has_head] = (out.log_probs.detach(), out.entropy, out.is_top1, out.label_mask, grad)
        model.__dict__.pop("forward", None)
    expected_mask = (labels if shifted else labels[:, 1:]) != -100
    assert torch.equal(results[False][3], expected_mask) and torch.equal(results[True][3], expected_mask)
    for a, b in zip(results[True], results[False]):
        if a.dtype == torch.bool:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a.float(), b.float(), atol=1e-5, rtol=1e-4)


def test_full_logits_outputs_of_an_all_masked_batch_keep_the_graph(monkeypatch):
    monkeypatch.setattr(fused, "HAS_FUSED_HEAD", False)
    model = controlled_model()
    ids = torch.tensor([[0, 3, 1, 2]])
    out = fused.token_outputs(model, {"input_ids": ids, "labels": torch.full_like(ids, -100)})
    assert not out.label_mask.any() and float(out.log_probs.detach().abs().sum()) == 0.0
    out.log_probs.sum().backward()  # an all-masked micro-batch contributes a differentiable zero
    assert model.lm_head.weight.grad is not None


@pytest.mark.parametrize("has_head", [True, False])
def test_model_token_entropy_of_a_soft_capped_model_equals_its_logits_entropy(monkeypatch, has_head):
    """Gemma-2 soft-caps its logits: the entropy goes through TRL's fused head (which applies the cap), or, on
    TRL < 1.15, through the model's own full logits; both equal the entropy of the model's output logits."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from slowed_peft.masking import entropy as entropy_module

    if has_head and not entropy_module.HAS_FUSED_HEAD:
        pytest.skip("TRL < 1.15: no fused head")
    monkeypatch.setattr(entropy_module, "HAS_FUSED_HEAD", has_head)
    torch.manual_seed(0)
    cfg = Gemma2Config(
        vocab_size=48,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        final_logit_softcapping=2.0,
    )
    model = Gemma2ForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # logits well beyond the cap, so an uncapped entropy would differ
    ids = torch.randint(0, 48, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    got = model_token_entropy(model, ids, mask)
    with torch.no_grad():
        expected = token_entropy(model(input_ids=ids, attention_mask=mask).logits[:, :-1])
    valid = (mask[:, 1:] != 0) & (mask[:, :-1] != 0)
    torch.testing.assert_close(got[:, 1:][valid], expected[valid], atol=1e-5, rtol=1e-4)
    assert torch.isnan(got[:, 0]).all() and torch.isnan(got[1, 6])
    with torch.no_grad():
        uncapped = token_entropy(model.lm_head(model.model(input_ids=ids).last_hidden_state)[:, :-1])
    assert (uncapped[valid] - expected[valid]).abs().max() > 0.1
