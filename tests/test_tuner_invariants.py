"""The SLowED tuner's invariants on tiny Llama, Qwen2, BLOOM and GPT-2 models (issue: tuner foundation)."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import get_peft_model
from transformers.pytorch_utils import Conv1D

import slowed_peft
from slowed_peft import SLowEDConfig, SLowEDLayer

from testing_utils import VOCAB, batch


RANKS = [None, 4]


def slowed(model, **kw):
    cfg = dict(target_modules="all-linear", slow_factor=0.5, max_drift=0.05, task_type="CAUSAL_LM")
    cfg.update(kw)
    return get_peft_model(model, SLowEDConfig(**cfg))


def train_steps(model, steps: int, lr: float, seed: int = 3):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    for i in range(steps):
        x = batch(seed + i)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return loss.item()


def slowed_layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, SLowEDLayer)}


@pytest.mark.parametrize("r", RANKS)
def test_outputs_equal_base_at_init(tiny_model, r):
    model, _ = tiny_model
    x = batch()
    with torch.no_grad():
        ref = model(x).logits.clone()
        pm = slowed(model, r=r)
        out = pm(x).logits
    assert torch.equal(out, ref)  # bit for bit
    wrapped = slowed_layers(pm)
    assert len(wrapped) >= 4
    # all-linear wraps every Linear/Conv1D but the output head, and nothing else is trainable
    assert not any("lm_head" in n for n in wrapped)
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert trainable and all(".slowed_" in n for n in trainable)


def test_dense_gradient_is_gamma_times_full_finetune_gradient(tiny_model):
    model, _ = tiny_model
    full = copy.deepcopy(model)
    gamma = 0.3
    pm = slowed(model, r=None, slow_factor=gamma, max_drift=None)
    x = batch()
    pm(input_ids=x, labels=x).loss.backward()
    for p in full.parameters():
        p.requires_grad_(True)
    full(input_ids=x, labels=x).loss.backward()
    full_modules = dict(full.named_modules())
    checked = 0
    for name, layer in slowed_layers(pm).items():
        base_name = name.removeprefix("base_model.model.")
        g_full = full_modules[base_name].weight.grad
        g_delta = layer.slowed_delta["default"].grad
        assert g_delta.shape == g_full.shape
        torch.testing.assert_close(g_delta, gamma * g_full, rtol=1e-5, atol=1e-7)
        checked += 1
    assert checked >= 4


@pytest.mark.parametrize("r", RANKS)
@pytest.mark.parametrize("granularity", ["matrix", "row"])
def test_trust_region_holds_after_aggressive_training(tiny_model, r, granularity):
    model, _ = tiny_model
    rho = 0.05
    w0 = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))}
    pm = slowed(model, r=r, slow_factor=1.0, max_drift=rho, drift_granularity=granularity)
    train_steps(pm, steps=12, lr=1.0)
    drift = slowed_peft.weight_drift(pm)
    assert drift.max <= rho * (1 + 1e-6)
    assert drift.max > 0.5 * rho  # lr=1.0 pushes every matrix to the boundary: the bound really binds
    if granularity == "row":
        assert drift.row_max <= rho * (1 + 1e-6)
    # merged weights obey the bound too, measured against the true initial weights
    pm.merge_adapter()
    for name, layer in slowed_layers(pm).items():
        w = layer.get_base_layer().weight.detach()
        ref = w0[name.removeprefix("base_model.model.")]
        row_dim = 0 if isinstance(layer.get_base_layer(), Conv1D) else 1
        if granularity == "matrix":
            rel = ((w - ref).norm() / ref.norm()).item()
        else:
            rel = ((w - ref).norm(dim=row_dim) / ref.norm(dim=row_dim)).max().item()
        assert rel <= rho * (1 + 1e-5), name


@pytest.mark.parametrize("r", RANKS)
def test_merge_unmerge_unload_disable(tiny_model, r):
    model, _ = tiny_model
    x = batch()
    with torch.no_grad():
        base_logits = model(x).logits.clone()
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    pm = slowed(model, r=r, slow_factor=1.0, max_drift=0.2)
    train_steps(pm, steps=3, lr=0.05)
    with torch.no_grad():
        tuned = pm(x).logits.clone()
        assert (tuned - base_logits).abs().max() > 1e-4  # the adapter changed something
        with pm.disable_adapter():
            assert torch.equal(pm(x).logits, base_logits)
        assert torch.equal(pm(x).logits, tuned)  # re-enabled after the block
        pm.merge_adapter()
        torch.testing.assert_close(pm(x).logits, tuned, atol=1e-5, rtol=0)
        pm.unmerge_adapter()
        for name, layer in slowed_layers(pm).items():
            ref = w0[name.removeprefix("base_model.model.") + ".weight"]
            torch.testing.assert_close(layer.get_base_layer().weight, ref, atol=1e-6, rtol=0)
        torch.testing.assert_close(pm(x).logits, tuned, atol=1e-5, rtol=0)
        merged = pm.merge_and_unload()
    assert type(merged).__module__.startswith("transformers.")
    assert not any(isinstance(m, SLowEDLayer) for m in merged.modules())
    with torch.no_grad():
        torch.testing.assert_close(merged(x).logits, tuned, atol=1e-5, rtol=0)


def test_stale_graph_raises_instead_of_wrong_gradients(tiny_llama):
    model, _ = tiny_llama
    pm = slowed(model, r=None)
    opt = torch.optim.SGD([p for p in pm.parameters() if p.requires_grad], lr=0.1)
    x = batch()
    pm(input_ids=x, labels=x).loss.backward()
    opt.step()
    loss = pm(input_ids=x, labels=x).loss  # graph built on the current effective weight
    opt.step()  # the deltas change under the pending graph ...
    pm(input_ids=x, labels=x)  # ... and the next forward rebuilds the effective weight in place
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_weight_drift_report(tiny_llama):
    model, _ = tiny_llama
    pm = slowed(model, r=None, slow_factor=1.0, max_drift=0.1)
    zero = slowed_peft.weight_drift(pm)
    assert zero.max == 0.0 and zero.mean == 0.0
    assert set(zero) == {n.removeprefix("base_model.model.") for n in slowed_layers(pm)}
    train_steps(pm, steps=2, lr=0.01)
    drift = slowed_peft.weight_drift(pm)
    assert 0 < drift.mean <= drift.max <= 0.1 * (1 + 1e-6)
    assert drift[drift.argmax] == drift.max
    assert set(drift.as_metrics()) == {"slowed/drift_max", "slowed/drift_mean", "slowed/drift_row_max"}
    with pytest.raises(ValueError, match="no SLowED layers"):
        slowed_peft.weight_drift(torch.nn.Linear(2, 2))


def test_vocab_constant_matches_models(tiny_model):
    model, _ = tiny_model
    assert model.get_input_embeddings().weight.shape[0] == VOCAB
