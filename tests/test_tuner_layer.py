"""Layer-level checks: the fused dense path against plain autograd, caching, dtypes and checkpointing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from peft import get_peft_model
from transformers.pytorch_utils import Conv1D

from slowed_peft import SLowEDConfig
from slowed_peft.tuner.functional import trust_region_scale
from slowed_peft.tuner.layer import Linear, _OptimizerSteps

from testing_utils import batch


def make_layer(kind: str, granularity: str, rho, r=None, seed=0):
    torch.manual_seed(seed)
    base = torch.nn.Linear(24, 16) if kind == "linear" else Conv1D(16, 24)
    cfg = SLowEDConfig(r=r, slow_factor=0.5, max_drift=rho, drift_granularity=granularity, init_weights=False)
    return Linear(base, "default", cfg)


def reference_forward(layer, x):
    """Plain autograd: base(x) + x·ΔWᵀ with ΔW = c(D)·D differentiable (the slow, obviously-correct path)."""
    delta = layer.get_delta_weight("default")
    extra = x @ delta if layer.is_conv1d else x @ delta.T
    return layer.base_layer(x) + extra


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("granularity", ["matrix", "row"])
@pytest.mark.parametrize("rho", [None, 0.05, 10.0])
@pytest.mark.parametrize("seq", [5, 20])  # 15 tokens < 24 inputs: scale folded into g; 60 tokens: scaled after
def test_fused_dense_matches_autograd_reference(kind, granularity, rho, seq):
    layer = make_layer(kind, granularity, rho)
    x = torch.randn(3, seq, 24, requires_grad=True)
    g = torch.randn(3, seq, 16)
    out = layer(x)
    (out * g).sum().backward()
    grad_fused, grad_x = layer.slowed_delta["default"].grad.clone(), x.grad.clone()
    layer.slowed_delta["default"].grad = None
    x.grad = None
    ref = reference_forward(layer, x)
    (ref * g).sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_fused, layer.slowed_delta["default"].grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad_x, x.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("granularity", ["matrix", "row"])
def test_trust_region_gradient_is_finite_at_zero_delta(granularity):
    layer = make_layer("linear", granularity, 0.05)
    with torch.no_grad():
        layer.slowed_delta["default"].zero_()
    x = torch.randn(4, 24)
    layer(x).sum().backward()
    grad = layer.slowed_delta["default"].grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_effective_weight_is_cached_until_delta_changes():
    layer = make_layer("linear", "matrix", 0.05)
    x = torch.randn(2, 24)
    layer(x)
    first = layer._weight_cache.weight
    version = first._version
    layer(x)
    assert layer._weight_cache.weight is first and first._version == version  # no rebuild
    with torch.no_grad():
        layer.slowed_delta["default"].mul_(0.5)
    out = layer(x)
    assert first._version > version  # rebuilt in place after the change
    torch.testing.assert_close(out, reference_forward(layer, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("optim_kwargs", [{"fused": True}, {"foreach": True}, {"foreach": False}])
def test_cache_follows_every_optimizer_kind(optim_kwargs):
    """Fused AdamW updates parameters without bumping version counters; the cache must still refresh."""
    layer = make_layer("linear", "matrix", 0.05)
    x = torch.randn(3, 24)
    opt = torch.optim.AdamW([layer.slowed_delta["default"]], lr=0.01, **optim_kwargs)
    for _ in range(2):
        layer(x).sum().backward()
        opt.step()
        opt.zero_grad()
        torch.testing.assert_close(layer(x), reference_forward(layer, x), rtol=1e-5, atol=1e-6)


def test_fused_adamw_step_leaves_versions_alone_yet_the_cached_weight_refreshes():
    """Why the step counter exists: a fused step does not bump ``_version``, so only the counter invalidates."""
    layer = make_layer("linear", "matrix", 10.0)
    delta = layer.slowed_delta["default"]
    x = torch.randn(3, 24)
    opt = torch.optim.AdamW([delta], lr=0.01, fused=True)
    layer(x).sum().backward()
    version = delta._version
    opt.step()
    assert delta._version == version, "fused AdamW now bumps _version; the optimizer-step counter may be unneeded"
    torch.testing.assert_close(layer(x), reference_forward(layer, x), rtol=1e-5, atol=1e-6)


def test_every_optimizer_step_counts_once_a_layer_caches():
    """Steps of optimizers that hold flattened copies of the deltas (DeepSpeed ZeRO-2) must invalidate too."""
    layer = make_layer("linear", "matrix", 0.05)
    x = torch.randn(2, 24)
    layer(x)  # builds the cache: counting is on
    other = torch.nn.Linear(4, 4)
    other(torch.randn(1, 4)).sum().backward()
    foreign = torch.optim.AdamW(other.parameters(), lr=0.1, fused=True)
    before = _OptimizerSteps.count
    foreign.step()
    assert _OptimizerSteps.count == before + 1
    cache = layer._weight_cache
    layer(x)
    assert layer._weight_cache is not cache  # rebuilt after any step
    torch.testing.assert_close(layer(x), reference_forward(layer, x), rtol=1e-5, atol=1e-6)


def test_importing_registers_no_optimizer_hook_until_a_layer_caches(tmp_path):
    script = textwrap.dedent(
        """
        import json
        import torch
        from torch.optim import optimizer
        hooks = lambda: len(optimizer._global_optimizer_post_hooks)
        counts = [hooks()]
        import slowed_peft, slowed_peft.tuner.layer
        counts.append(hooks())
        layers = [slowed_peft.Linear(torch.nn.Linear(8, 4), "default", slowed_peft.SLowEDConfig()) for _ in range(2)]
        counts.append(hooks())
        for layer in layers:
            layer(torch.randn(2, 8))  # the fused dense path builds its cached weight
            counts.append(hooks())
        print(json.dumps(counts))
        """
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    start = json.loads(res.stdout.strip().splitlines()[-1])[0]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == [start, start, start, start + 1, start + 1]


def test_bf16_base_with_fp32_adapter_trains(tiny_llama):
    model, path = tiny_llama
    model = model.to(torch.bfloat16)
    pm = get_peft_model(model, SLowEDConfig(target_modules="all-linear", slow_factor=1.0, max_drift=0.1))
    deltas = [p for n, p in pm.named_parameters() if p.requires_grad]
    assert deltas and all(p.dtype == torch.float32 for p in deltas)
    x = batch()
    with torch.no_grad():
        base = model(x).logits.clone()  # adapters are zero: same as base
    pm.train()
    loss = pm(input_ids=x, labels=x).loss
    assert loss.dtype == torch.float32  # transformers upcasts the bf16 logits for the loss
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in deltas)
    torch.optim.AdamW(deltas, lr=0.01).step()
    with torch.no_grad():
        after = pm(x).logits
    assert after.dtype == torch.bfloat16
    assert (after.float() - base.float()).abs().max() > 0  # small fp32 updates are not lost in bf16 rounding


@pytest.mark.parametrize("r", [None, 4])
def test_gradient_checkpointing_gives_same_loss_and_grads(tiny_llama, r):
    model, _ = tiny_llama
    pm = get_peft_model(model, SLowEDConfig(target_modules="all-linear", r=r, slow_factor=1.0, max_drift=0.1))
    x = batch()
    pm.train()

    def grads():
        for p in pm.parameters():
            p.grad = None
        loss = pm(input_ids=x, labels=x).loss
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in pm.named_parameters() if p.requires_grad}

    plain_loss, plain = grads()
    pm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ckpt_loss, ckpt = grads()
    assert pm.base_model.model.is_gradient_checkpointing
    assert plain_loss == pytest.approx(ckpt_loss, abs=1e-6)
    for n in plain:
        torch.testing.assert_close(plain[n], ckpt[n], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("granularity", ["matrix", "row"])
@pytest.mark.parametrize("rho", [None, 0.001, 10.0])
def test_low_rank_scale_gradient_matches_autograd_reference(granularity, rho):
    layer = make_layer("linear", granularity, rho, r=4, seed=1)
    a, b = layer.slowed_A["default"], layer.slowed_B["default"]
    x, g = torch.randn(5, 24), torch.randn(5, 16)
    (layer(x) * g).sum().backward()
    fused = (a.grad.clone() if a.grad is not None else torch.zeros_like(a), b.grad.clone())
    a.grad = b.grad = None
    # reference: plain differentiable ops through the norm, clamp and rescale
    per_row = granularity == "row"
    w0n = layer.slowed_w0_norm["default"].reshape(-1, 1) if per_row else layer.slowed_w0_norm["default"]
    sq = (b @ a).pow(2).sum(dim=1, keepdim=True) if per_row else (b @ a).pow(2).sum()  # ‖B@A‖², built in full
    c = trust_region_scale(sq, w0n, 0.5, rho) if rho is not None else 0.5
    ref = layer.base_layer(x) + x @ a.T @ (b * c).T
    (ref * g).sum().backward()
    torch.testing.assert_close(fused[0], a.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fused[1], b.grad, rtol=1e-4, atol=1e-6)
    if rho == 0.001:  # the bound binds, so the projection terms were exercised
        assert fused[0].abs().sum() > 0


def test_zero3_partitioned_weight_is_refused_with_a_clear_error():
    base = torch.nn.Linear(8, 4)
    base.weight.ds_id = 0  # what DeepSpeed ZeRO-3 puts on the parameters it partitions
    with pytest.raises(ValueError, match="ZeRO-3.*ZeRO-2"):
        Linear(base, "default", SLowEDConfig(r=None))
