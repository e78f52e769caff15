"""Saving, loading (same and fresh process), multiple adapters, registration, LoRA export and bad input."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils.peft_types import PeftType
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import slowed_peft
from slowed_peft import SLowEDConfig

from testing_utils import FAMILIES, batch, build_tiny


def trained(model, r=None, seed=0, **kw):
    cfg = SLowEDConfig(target_modules="all-linear", r=r, slow_factor=1.0, max_drift=0.2, task_type="CAUSAL_LM", **kw)
    pm = get_peft_model(model, cfg)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    return pm


@pytest.mark.parametrize("r", [None, 4])
def test_save_writes_safetensors_and_config(tiny_model, tmp_path, r):
    model, _ = tiny_model
    pm = trained(model, r=r)
    out = tmp_path / "adapter"
    pm.save_pretrained(out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "SLOWED" and cfg["r"] == r and cfg["slow_factor"] == 1.0
    assert cfg["max_drift"] == 0.2 and cfg["drift_granularity"] == "matrix"
    state = load_file(out / "adapter_model.safetensors")
    assert state and all(".slowed_" in k for k in state)
    assert any(k.endswith("slowed_w0_norm") for k in state)  # the bound travels with the adapter
    loaded = SLowEDConfig.from_pretrained(str(out)).to_dict()
    expected = pm.peft_config["default"].to_dict()
    assert loaded.pop("inference_mode") is True  # PEFT saves adapters in inference mode
    expected.pop("inference_mode")
    assert loaded == expected


def test_fresh_process_loads_with_import_and_fails_without(tmp_path):
    """Every family's adapter loads in a fresh interpreter after ``import slowed_peft`` (PeftModel and
    AutoPeftModelForCausalLM, same logits) and fails with ``KeyError: 'SLOWED'`` without it (one process each)."""
    cases = []
    for family in FAMILIES:
        base_path = tmp_path / f"tiny-{family}"
        pm = trained(build_tiny(family, base_path))
        x = batch()
        with torch.no_grad():
            logits = pm(x).logits
        out = tmp_path / f"adapter-{family}"
        pm.save_pretrained(out)
        torch.save({"x": x, "logits": logits}, tmp_path / f"expected-{family}.pt")
        cases.append((str(base_path), str(out), str(tmp_path / f"expected-{family}.pt")))
    script = textwrap.dedent(
        f"""
        import os, sys, torch
        os.environ["HF_HUB_OFFLINE"] = "1"
        if sys.argv[1] == "with":
            import slowed_peft
        from peft import AutoPeftModelForCausalLM, PeftModel
        from transformers import AutoModelForCausalLM
        for base_path, adapter, expected in {cases!r}:
            ref = torch.load(expected)
            a = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), adapter)
            b = AutoPeftModelForCausalLM.from_pretrained(adapter)
            with torch.no_grad():
                for m in (a, b):
                    torch.testing.assert_close(m(ref["x"]).logits, ref["logits"], atol=1e-6, rtol=0)
            print("OK", adapter)
        """
    )
    ok = subprocess.run([sys.executable, "-c", script, "with"], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and ok.stdout.count("OK") == len(FAMILIES), ok.stderr[-2000:]
    no_hook = {**os.environ, "SLOWED_PEFT_NO_HOOK": "1"}  # the start-up hook would register it (tests/test_hook.py)
    bad = subprocess.run(
        [sys.executable, "-c", script, "without"], capture_output=True, text=True, timeout=300, env=no_hook
    )
    assert bad.returncode != 0 and "KeyError: 'SLOWED'" in bad.stderr  # documented in the README


def test_multiple_adapters_add_switch_delete_save_load(tiny_llama, tmp_path):
    model, base_path = tiny_llama
    x = batch()
    pm = trained(model, seed=0)
    pm.add_adapter("other", SLowEDConfig(target_modules=["q_proj", "v_proj"], r=2, init_weights=False))
    pm.add_adapter("third", SLowEDConfig(target_modules="all-linear", init_weights=False))
    with torch.no_grad():
        out_default = pm(x).logits.clone()
        pm.set_adapter("other")
        out_other = pm(x).logits.clone()
        assert (out_default - out_other).abs().max() > 1e-4
        assert all(n.endswith(".other") for n, p in pm.named_parameters() if p.requires_grad)
    pm.delete_adapter("third")
    assert set(pm.peft_config) == {"default", "other"}
    pm.save_pretrained(tmp_path / "multi")
    assert (tmp_path / "multi" / "adapter_model.safetensors").exists()
    assert (tmp_path / "multi" / "other" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "multi" / "third").exists()

    base = build_tiny("llama", tmp_path / "reload")  # same seed: same base weights
    loaded = PeftModel.from_pretrained(base, tmp_path / "multi")
    loaded.load_adapter(tmp_path / "multi" / "other", adapter_name="other")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, out_default, atol=1e-6, rtol=0)
        loaded.set_adapter("other")
        torch.testing.assert_close(loaded(x).logits, out_other, atol=1e-6, rtol=0)


def test_registration_is_idempotent_and_leaves_lora_working(tiny_llama):
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    n_types = len(PeftType)
    importlib.reload(slowed_peft)
    importlib.reload(slowed_peft.tuner)  # the package that registers on import
    assert slowed_peft.register_slowed() is PeftType.SLOWED
    assert len(PeftType) == n_types
    assert PeftType("SLOWED") is PeftType.SLOWED is PeftType["SLOWED"]
    assert PEFT_TYPE_TO_CONFIG_MAPPING["SLOWED"] is slowed_peft.SLowEDConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.LORA].__name__ == "LoraModel"
    model, _ = tiny_llama
    lora = get_peft_model(model, LoraConfig(target_modules=["q_proj"], r=2, init_lora_weights=False))
    x = batch()
    with torch.no_grad():
        assert torch.isfinite(lora(x).logits).all()
    assert lora.peft_config["default"].peft_type == PeftType.LORA


def test_export_as_lora_is_loadable_by_peft_alone(tmp_path):
    """Dense and low-rank adapters of every family export to plain LoRA that a process without slowed_peft loads
    with the same logits (one fresh interpreter for all eight exports)."""
    x = batch()
    torch.save(x, tmp_path / "x.pt")
    cases = []
    for family in FAMILIES:
        base_path = tmp_path / f"tiny-{family}"
        build_tiny(family, base_path)
        for r in (None, 4):
            pm = trained(AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32).eval(), r=r)
            with torch.no_grad():
                torch.save(pm(x).logits, tmp_path / f"expected-{family}-{r}.pt")
            lora = tmp_path / f"lora-{family}-{r}"
            report = slowed_peft.export_as_lora(pm, lora, rank=r or 1.0)
            assert report.nbytes <= report.adapter_nbytes  # all energy asked, but never larger than the dense delta
            if r is not None:
                assert report.max_rel_error < 1e-3  # own rank: exact up to SVD rounding
            else:  # capped: the expected logits are those of the exported LoRA itself, loaded in this process
                assert 0.0 < report.max_rel_error < 1.0
                with torch.no_grad():
                    approx = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), lora)
                    torch.save(approx(x).logits, tmp_path / f"expected-{family}-{r}.pt")
            assert json.loads((lora / "adapter_config.json").read_text())["peft_type"] == "LORA"
            cases.append((str(base_path), str(lora), str(tmp_path / f"lora-logits-{family}-{r}.pt")))
            if r is None and family == "llama":  # a truncated export reports a non-zero error honestly
                low = slowed_peft.export_as_lora(pm, tmp_path / "lora_low", rank=1)
                assert 0.05 < low.max_rel_error < 1.0
    script = textwrap.dedent(
        f"""
        import sys, torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
        x = torch.load({str(tmp_path / "x.pt")!r})
        for base_path, lora, out in {cases!r}:
            m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), lora)
            with torch.no_grad():
                torch.save(m(x).logits, out)
        assert "slowed_peft" not in sys.modules
        """
    )
    no_hook = {**os.environ, "SLOWED_PEFT_NO_HOOK": "1"}  # plain peft, as for a user without this package
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=no_hook)
    assert res.returncode == 0, res.stderr[-2000:]
    root = str(Path(__file__).resolve().parents[1])  # a checkout or venv path may itself be named slowed_peft
    assert "slowed_peft" not in res.stderr.replace(sys.prefix, "<venv>").replace(root + os.sep, "<repo>/")
    for family in FAMILIES:
        for r in (None, 4):
            torch.testing.assert_close(
                torch.load(tmp_path / f"lora-logits-{family}-{r}.pt"),
                torch.load(tmp_path / f"expected-{family}-{r}.pt"),
                atol=1e-3,
                rtol=0,
            )


# --------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"slow_factor": 0.0}, "slow_factor"),
        ({"slow_factor": -0.1}, "slow_factor"),
        ({"slow_factor": 1.5}, "slow_factor"),
        ({"max_drift": 0.0}, "max_drift"),
        ({"max_drift": -1.0}, "max_drift"),
        ({"r": 0}, "r"),
        ({"r": -3}, "r"),
        ({"drift_granularity": "column"}, "drift_granularity"),
    ],
)
def test_bad_config_values_name_the_field(kwargs, field):
    value = next(iter(kwargs.values()))
    with pytest.raises(ValueError, match=rf"`{field}`.*{field}={value!r}".replace("(", r"\(").replace(")", r"\)")):
        SLowEDConfig(**kwargs)


def test_unsupported_target_layer_lists_supported_types(tiny_llama):
    model, _ = tiny_llama
    with pytest.raises(
        ValueError, match=r"embed_tokens.*Embedding.*supported layer types: torch.nn.modules.linear.Linear"
    ):
        get_peft_model(model, SLowEDConfig(target_modules=["embed_tokens"]))


def test_loading_onto_other_shapes_names_module_and_shapes(tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig

    small = build_tiny("llama", tmp_path / "small")
    pm = trained(small)
    pm.save_pretrained(tmp_path / "adapter")
    wide = AutoModelForCausalLM.from_config(
        LlamaConfig(
            vocab_size=96,
            hidden_size=48,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    with pytest.raises(
        ValueError,
        match=r"module 'model.layers.0.self_attn.q_proj' \(slowed_delta\): \(32, 32\) in the checkpoint but \(48, 48\) in the model",
    ):
        PeftModel.from_pretrained(wide, tmp_path / "adapter")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_safetensors_names_the_file(tiny_llama, tmp_path, damage):
    model, base_path = tiny_llama
    pm = trained(model)
    out = tmp_path / "adapter"
    pm.save_pretrained(out)
    f = out / "adapter_model.safetensors"
    data = f.read_bytes()
    f.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x12" * 64, "empty": b""}[damage])
    base = build_tiny("llama", tmp_path / "b2")
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors"):
        PeftModel.from_pretrained(base, out)


# ------------------------------------------------------------------------------------------- LoRA export by bytes
def test_export_by_byte_budget_reports_output_error_and_never_exceeds_the_adapter(tmp_path):
    """Ranks chosen by a byte budget: size within budget and never above the dense adapter, error shrinking with
    the budget, and the output-space numbers (computed in-process) equal what plain peft gives on reload."""
    base_path = tmp_path / "tiny"
    pm = trained(build_tiny("llama", base_path), r=None)
    x = batch(bs=2, seq=16)
    default = slowed_peft.export_as_lora(pm, tmp_path / "default", eval_input_ids=x)
    assert 0 < default.nbytes <= default.adapter_nbytes  # the 0.99-energy default no longer outgrows the dense delta
    dense = default.adapter_nbytes
    rows = []
    for frac in (0.05, 0.2, 0.5, 1.0):
        rep = slowed_peft.export_as_lora(pm, tmp_path / f"b{frac}", max_bytes=int(frac * dense), eval_input_ids=x)
        assert rep.nbytes <= int(frac * dense)
        assert 0.0 <= rep.top1_agreement <= 1.0 and rep.logit_kl >= 0.0 and rep.base_kl > 0.0
        rows.append(rep)
    assert rows[0].mean_rel_error > rows[-1].mean_rel_error and rows[0].logit_kl > rows[-1].logit_kl
    huge = slowed_peft.export_as_lora(pm, tmp_path / "huge", max_bytes=10 * dense)
    assert huge.nbytes <= dense
    # the in-process KL equals the KL of the exported files loaded by plain peft
    rep = rows[1]
    lora = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), rep.out_dir).eval()
    with torch.no_grad():
        ref = torch.log_softmax(pm(x).logits, -1)
        got = torch.log_softmax(lora(x).logits, -1)
    kl = float((ref.exp() * (ref - got)).sum(-1).mean())
    assert abs(kl - rep.logit_kl) <= 1e-4 + 1e-3 * rep.logit_kl
    assert json.loads((tmp_path / "b0.2" / "adapter_config.json").read_text())["peft_type"] == "LORA"


def test_low_rank_export_at_own_rank_is_exact_in_output_space(tmp_path):
    pm = trained(build_tiny("llama", tmp_path / "tiny"), r=4)
    rep = slowed_peft.export_as_lora(pm, tmp_path / "lora", eval_input_ids=batch())
    assert rep.max_rel_error < 1e-4 and rep.logit_kl < 1e-6 and rep.top1_agreement == 1.0
    assert rep.nbytes <= rep.adapter_nbytes and set(rep.rank.values()) == {4}


def test_export_budget_below_one_component_is_refused(tmp_path):
    pm = trained(build_tiny("llama", tmp_path / "tiny"), r=None)
    with pytest.raises(ValueError, match="max_bytes"):
        slowed_peft.export_as_lora(pm, tmp_path / "lora", max_bytes=8)
    with pytest.raises(ValueError, match="max_bytes"):
        slowed_peft.export_as_lora(pm, tmp_path / "lora", max_bytes=-1)
