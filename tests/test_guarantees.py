"""The guarantees that hold on every path (issue 15): the bound comes from the W0 in memory, adapters load whole or
fail, merged weights obey the bound, adapter names stay inside the save folder, only the active adapter trains."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from slowed_peft import SLowEDConfig
from slowed_peft.tuner import lenient_load
from slowed_peft.tuner.layer import SLowEDLayer

from testing_utils import batch, tiny_config


def tiny(seed: int = 0, layers: int = 2, dtype=torch.float32):
    """The tiny Llama; with ``layers=1`` its first layer keeps the weights of the 2-layer model (same seed)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config("llama")).to(dtype).eval()
    if layers < model.config.num_hidden_layers:
        model.model.layers = model.model.layers[:layers]
        model.config.num_hidden_layers = layers
    return model


def at_bound(model, rho: float = 0.05, granularity: str = "matrix", r=None, **kw):
    """A SLowED model whose deltas are pushed far outside the trust region (so ‖ΔW‖ = ρ‖W0‖ exactly)."""
    cfg = SLowEDConfig(
        target_modules="all-linear", r=r, slow_factor=1.0, max_drift=rho, drift_granularity=granularity, **kw
    )
    pm = get_peft_model(model, cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if p.requires_grad and "slowed_" in n:
                p.normal_(0, 1.0)
    return pm


def drift_vs(weights0: dict[str, torch.Tensor], model, row: bool = False) -> float:
    """max ‖W − W0‖ / ‖W0‖ of the targeted weights of a plain model against saved copies of W0."""
    worst = 0.0
    for name, w in model.named_parameters():
        if name in weights0:
            w0 = weights0[name].double()
            d = w.detach().double() - w0
            if row:
                worst = max(worst, float((d.norm(dim=1) / w0.norm(dim=1)).max()))
            else:
                worst = max(worst, float(d.norm() / w0.norm()))
    return worst


def linear_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("proj.weight") and "layers" in n}


def layer_drifts(pm) -> list[float]:
    """‖ΔW‖ / ‖W0‖ of every SLowED layer, W0 being the base weight in memory."""
    out = []
    for m in pm.modules():
        if isinstance(m, SLowEDLayer):
            w0 = m.get_base_layer().weight.detach().double()
            out.append(float(m.get_delta_weight("default").double().norm() / w0.norm()))
    return out


# ------------------------------------------------------------------------------------- 1. the bound's W0
def test_bound_is_taken_from_the_base_in_memory(tmp_path):
    at_bound(tiny()).save_pretrained(tmp_path / "a")
    other = tiny()
    with torch.no_grad():
        for n, p in other.named_parameters():
            if n.endswith("proj.weight"):
                p.mul_(0.5)  # same shapes, other weights: the stored ‖W0‖ is twice the real one
    with pytest.raises(
        ValueError, match=r"slowed_w0_norm of module .model\.layers\.\d\.\S+_proj.*100\.00%.*lenient_load"
    ):
        PeftModel.from_pretrained(other, tmp_path / "a")
    with lenient_load(other_base=True), pytest.warns(UserWarning, match="slowed_w0_norm"):
        pm = PeftModel.from_pretrained(other, tmp_path / "a")
    assert max(layer_drifts(pm)) <= 0.05 * (1 + 1e-5)  # bound re-derived from the W0 in memory


def test_tampered_w0_norm_is_refused(tmp_path):
    at_bound(tiny()).save_pretrained(tmp_path / "a")
    f = tmp_path / "a" / "adapter_model.safetensors"
    state = load_file(f)
    state = {k: v * 20 if k.endswith("slowed_w0_norm") else v for k, v in state.items()}
    save_file(state, f)
    with pytest.raises(ValueError, match=r"slowed_w0_norm.*tolerance"):
        PeftModel.from_pretrained(tiny(), tmp_path / "a")


def test_same_base_in_bf16_loads_within_tolerance(tmp_path):
    at_bound(tiny(), granularity="row").save_pretrained(tmp_path / "a")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        pm = PeftModel.from_pretrained(tiny(dtype=torch.bfloat16), tmp_path / "a")
    assert pm(batch()).logits.isfinite().all()


# ------------------------------------------------------------------------------- 2. partial / mismatched
def test_adapter_for_more_layers_is_an_error_naming_the_keys(tmp_path):
    at_bound(tiny(layers=2)).save_pretrained(tmp_path / "a")
    with pytest.raises(ValueError, match=r"unexpected.*model\.layers\.1\.\S*slowed_delta"):
        PeftModel.from_pretrained(tiny(layers=1), tmp_path / "a")
    with lenient_load(partial=True), pytest.warns(UserWarning, match=r"model\.layers\.1"):
        PeftModel.from_pretrained(tiny(layers=1), tmp_path / "a")


def test_dense_tensors_with_a_low_rank_config_is_an_error(tmp_path):
    at_bound(tiny()).save_pretrained(tmp_path / "a")
    cfg = tmp_path / "a" / "adapter_config.json"
    cfg.write_text(cfg.read_text().replace('"r": null', '"r": 4'))
    with pytest.raises(ValueError, match=r"missing.*slowed_A.*unexpected.*slowed_delta"):
        PeftModel.from_pretrained(tiny(), tmp_path / "a")


def test_adapter_for_fewer_layers_loads_whole(tmp_path):
    """PEFT saves the wrapped module paths, so a 1-layer adapter wraps layer 0 only of a 2-layer base: complete."""
    at_bound(tiny(layers=1)).save_pretrained(tmp_path / "a")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        pm = PeftModel.from_pretrained(tiny(layers=2), tmp_path / "a")
    assert max(layer_drifts(pm)) == pytest.approx(0.05, rel=1e-5)


# ------------------------------------------------------------------------------------------- 3. merging
@pytest.mark.parametrize(
    ("dtype", "rho", "granularity"),
    [
        (torch.bfloat16, 0.002, "matrix"),
        (torch.bfloat16, 0.01, "row"),
        (torch.float32, 1e-6, "row"),
        (torch.float32, 1e-6, "matrix"),
    ],
)
def test_merged_weights_obey_the_bound(dtype, rho, granularity):
    model = tiny(dtype=dtype)
    w0 = linear_weights(model)
    pm = at_bound(model, rho=rho, granularity=granularity)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = pm.merge_and_unload()
    assert drift_vs(w0, merged, row=granularity == "row") <= rho * (1 + 1e-6)


def test_lossy_merge_warns_and_fp32_merge_is_the_documented_path():
    pm = at_bound(tiny(dtype=torch.bfloat16), rho=0.002)
    with pytest.warns(UserWarning, match=r"bfloat16 lost \d+% of ΔW.*float32"):
        pm.merge_and_unload()
    # The recommended path: merge in float32 (ΔW kept), keep or cast afterwards.
    model = tiny(dtype=torch.bfloat16).to(torch.float32)
    w0 = linear_weights(model)
    pm = at_bound(model, rho=0.002)
    deltas = {n: m.get_delta_weight("default").detach().clone() for n, m in pm.named_modules() if hasattr(m, "r")}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        merged = pm.merge_and_unload()
    assert drift_vs(w0, merged) <= 0.002 * (1 + 1e-6)
    for name, delta in deltas.items():
        key = name.removeprefix("base_model.model.") + ".weight"
        got = merged.get_parameter(key).detach() - w0[key]
        assert float((got - delta).norm() / delta.norm()) < 1e-3


def test_merge_adapter_unmerge_round_trip_keeps_the_bound():
    model = tiny(dtype=torch.bfloat16)
    w0 = linear_weights(model)
    pm = at_bound(model, rho=0.002)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm.merge_adapter()
    assert drift_vs(w0, pm.get_base_model()) <= 0.002 * (1 + 1e-6)


# ------------------------------------------------------------------------------------- 4. adapter names
@pytest.mark.parametrize("name", ["/tmp/evil", "../up", "a/b", "a\\b", "..", ".", ""])
def test_adapter_names_cannot_leave_the_save_folder(tmp_path, name):
    pm = get_peft_model(tiny(), SLowEDConfig(target_modules="all-linear"))
    with pytest.raises(ValueError, match="adapter_name"):
        pm.add_adapter(name, SLowEDConfig(target_modules="all-linear"))
    with pytest.raises(ValueError, match="adapter_name"):
        get_peft_model(tiny(), SLowEDConfig(target_modules="all-linear"), adapter_name=name)


def test_adapter_name_check_keeps_ordinary_names(tmp_path):
    pm = get_peft_model(tiny(), SLowEDConfig(target_modules="all-linear"))
    pm.add_adapter("safety-v2_final", SLowEDConfig(target_modules="all-linear"))
    pm.save_pretrained(tmp_path / "out")
    assert (tmp_path / "out" / "safety-v2_final" / "adapter_model.safetensors").is_file()


# ----------------------------------------------------------------------------- 5. multiple adapters' grads
def _trainable(pm) -> list[tuple[str, str]]:
    """``(adapter, "delta" | "modules_to_save")`` pairs that have a parameter with ``requires_grad``."""
    out = set()
    for n, p in pm.named_parameters():
        if p.requires_grad:
            adapter = next(a for a in ("default", "second", "third", "fourth") if f".{a}." in n or n.endswith(a))
            out.add((adapter, "modules_to_save" if "modules_to_save" in n else "delta"))
    return sorted(out)


def _grad_story(tmp_path, make) -> list[list[tuple[str, str]]]:
    get_peft_model(tiny(), make()).save_pretrained(tmp_path)
    steps = []
    pm = PeftModel.from_pretrained(tiny(), tmp_path, is_trainable=True)
    steps.append(_trainable(pm))
    pm.load_adapter(tmp_path, adapter_name="second", is_trainable=True)
    steps.append(_trainable(pm))
    pm.load_adapter(tmp_path, adapter_name="third")
    steps.append(_trainable(pm))
    pm.set_adapter("second")
    steps.append(_trainable(pm))
    pm.add_adapter("fourth", make())
    steps.append(_trainable(pm))
    fresh = get_peft_model(tiny(), make())
    fresh.add_adapter("second", make())
    steps.append(_trainable(fresh))
    return steps


@pytest.mark.parametrize("modules_to_save", [None, ["lm_head"]])
def test_requires_grad_of_several_adapters_matches_lora(tmp_path, modules_to_save):
    """PEFT 0.21's convention, followed by LoRA: only the active adapter trains, except that ``load_adapter(...,
    is_trainable=True)`` explicitly makes the loaded (inactive) adapter trainable too; a plain ``load_adapter`` or
    ``add_adapter`` leaves the new adapter frozen; ``set_adapter`` moves training to the adapter it activates."""
    lora = _grad_story(
        tmp_path / "lora", lambda: LoraConfig(target_modules="all-linear", modules_to_save=modules_to_save)
    )
    slowed = _grad_story(
        tmp_path / "slowed", lambda: SLowEDConfig(target_modules="all-linear", modules_to_save=modules_to_save)
    )
    assert slowed == lora
    assert slowed[2] == slowed[1]  # a plain load_adapter adds a frozen adapter
    assert {a for a, _ in slowed[3]} == {"second"} and {a for a, _ in slowed[5]} == {"default"}


# -------------------------------------------------------------------------------------- 7. config values
@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"max_drift": math.inf}, "max_drift=inf"),
        ({"max_drift": math.nan}, "max_drift=nan"),
        ({"max_drift": True}, "max_drift=True"),
        ({"slow_factor": True}, "slow_factor=True"),
        ({"slow_factor": math.nan}, "slow_factor=nan"),
    ],
)
def test_config_rejects_inf_nan_and_bools(kwargs, shown):
    with pytest.raises(ValueError, match=shown):
        SLowEDConfig(**kwargs)
