"""``save_precision="4bit"``: compressed dense adapters (size, output error, trust region, errors, the fp32 opt-out)
and the adapter folder's own README.md / base_model_name_or_path."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from peft import AutoPeftModelForCausalLM, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig

import slowed_peft
from slowed_peft import SLowEDConfig, SLowEDLayer
from slowed_peft.tuner import compress as C

from testing_utils import FAMILIES, batch, build_tiny


RHO = 0.05


def config(**kw):
    base = dict(target_modules="all-linear", slow_factor=0.5, max_drift=RHO, task_type="CAUSAL_LM")
    return SLowEDConfig(**{**base, **kw})


def train(pm, steps: int = 6, lr: float = 3e-3, seq: int = 16):
    """A real-ish delta: a few AdamW steps of language modelling on random tokens."""
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=lr)
    for s in range(steps):
        x = batch(seed=s, bs=4, seq=seq)
        pm(x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    return pm.eval()


def mean_kl(ref_logits: torch.Tensor, logits: torch.Tensor) -> float:
    lp, lq = F.log_softmax(ref_logits.float(), -1), F.log_softmax(logits.float(), -1)
    return float((lp.exp() * (lp - lq)).sum(-1).mean())


def drifts(pm) -> list[tuple[float, float]]:
    """``(‖ΔW‖, ρ‖W0‖)`` per layer (per row for row granularity: the worst row's ratio as (ratio, 1))."""
    out = []
    for m in pm.modules():
        if isinstance(m, SLowEDLayer):
            d = m.get_delta_weight("default").detach().double()
            w0 = m.get_base_layer().weight.double()
            if m.drift_granularity["default"] == "row":
                dim = m._row_dim("default")
                out.append((float((d.norm(dim=dim) / w0.norm(dim=dim)).max()), RHO))
            else:
                out.append((float(d.norm()), RHO * float(w0.norm())))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_roundtrip_is_close_small_and_transparent(family, tmp_path):
    pm = train(get_peft_model(build_tiny(family, tmp_path / "base"), config(save_precision="4bit")))
    held_out = batch(seed=999, bs=8, seq=24)
    with torch.no_grad():
        ref = pm(held_out).logits
    pm.save_pretrained(tmp_path / "a")
    state = load_file(tmp_path / "a" / "adapter_model.safetensors")
    assert not any(k.endswith(".slowed_delta") for k in state) and any(k.endswith(".slowed_qcodes") for k in state)
    loaded = PeftModel.from_pretrained(build_tiny(family, tmp_path / "base2"), tmp_path / "a")
    auto = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "a")
    with torch.no_grad():
        for model in (loaded, auto):
            assert mean_kl(ref, model(held_out).logits) <= 1e-3
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["save_precision"] == "4bit"


@pytest.mark.parametrize("granularity", ["matrix", "row"])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_trust_region_holds_on_the_reconstructed_delta(family, granularity, tmp_path):
    pm = get_peft_model(
        build_tiny(family, tmp_path / "base"), config(save_precision="4bit", drift_granularity=granularity)
    )
    with torch.no_grad():  # every delta far outside the region: the saved ΔW sits exactly on the boundary
        for p in pm.parameters():
            if p.requires_grad:
                p.normal_(0, 1.0)
    assert all(d == pytest.approx(b, rel=1e-5) for d, b in drifts(pm))
    pm.save_pretrained(tmp_path / "a")
    state = load_file(tmp_path / "a" / "adapter_model.safetensors")
    loaded = PeftModel.from_pretrained(build_tiny(family, tmp_path / "base2"), tmp_path / "a")
    for key, parts in sorted(C.compressed_modules(state).items()):
        rec = C.decompress_matrix(parts, key).double()  # the stored delta itself, before any forward-pass clipping
        w0_key = f"{key}.slowed_w0_norm"
        bound = RHO * state[w0_key].double().reshape(-1)
        norms = rec.norm(dim=1) if granularity == "row" else rec.norm()
        assert bool((norms <= bound).all()), key
    assert all(d <= b * (1 + 1e-6) for d, b in drifts(loaded))


def test_fp32_opt_out_is_exact(tmp_path):
    pm = train(get_peft_model(build_tiny("llama", tmp_path / "base"), config(save_precision="fp32")), steps=3)
    x = batch(seed=5)
    with torch.no_grad():
        ref = pm(x).logits
    pm.save_pretrained(tmp_path / "a")
    state = load_file(tmp_path / "a" / "adapter_model.safetensors")
    assert any(k.endswith(".slowed_delta") for k in state) and not any("slowed_q" in k for k in state)
    loaded = PeftModel.from_pretrained(build_tiny("llama", tmp_path / "b"), tmp_path / "a")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, ref, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="save_precision"):
        config(save_precision="int4")


def test_low_rank_and_modules_to_save_stay_exact(tmp_path):
    pm = train(get_peft_model(build_tiny("llama", tmp_path / "base"), config(r=4, save_precision="4bit")), steps=3)
    x = batch(seed=5)
    with torch.no_grad():
        ref = pm(x).logits
    pm.save_pretrained(tmp_path / "a")
    loaded = PeftModel.from_pretrained(build_tiny("llama", tmp_path / "b"), tmp_path / "a")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, ref, atol=1e-6, rtol=0)


def test_size_is_at_most_a_quarter_of_the_bf16_weights(tmp_path):
    """Matrices of realistic width (256): the whole file, headers included, ≤ 0.25 × the wrapped bf16 weights."""
    cfg = LlamaConfig(
        vocab_size=96,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16)
    pm = train(get_peft_model(base, config(save_precision="4bit")), steps=2, lr=1e-3, seq=8)
    pm.save_pretrained(tmp_path / "a")
    wrapped = sum(m.get_base_layer().weight.numel() for m in pm.modules() if isinstance(m, SLowEDLayer))
    size = (tmp_path / "a" / "adapter_model.safetensors").stat().st_size
    assert size <= 0.25 * 2 * wrapped, size / (2 * wrapped)
    assert C.stored_bits_per_entry(load_file(tmp_path / "a" / "adapter_model.safetensors")) <= 4.0


def test_bit_packing_roundtrips():
    g = torch.Generator().manual_seed(0)
    for bits in range(C.MIN_BITS, C.MAX_BITS + 1):
        codes = torch.randint(0, 1 << bits, (37, 11), generator=g)
        packed = C.pack_bits(codes, bits)
        assert packed.dtype == torch.uint8 and packed.numel() == C.packed_bytes(codes.numel(), bits)
        assert torch.equal(C.unpack_bits(packed, bits, codes.numel()).reshape(37, 11), codes)


def test_allocation_respects_the_budget_and_favours_larger_entries():
    shapes = [(512, 512), (512, 512), (256, 1024)]
    bits = C.allocate_bits(shapes, [1.0, 0.01, 1.0])
    used = sum(o * i * b + C.overhead_bits(o, b) for (o, i), b in zip(shapes, bits))
    assert used <= 4.0 * sum(o * i for o, i in shapes) and bits[0] > bits[1]


def _saved(tmp_path):
    pm = train(get_peft_model(build_tiny("llama", tmp_path / "base"), config(save_precision="4bit")), steps=2)
    pm.save_pretrained(tmp_path / "a")
    return tmp_path / "a" / "adapter_model.safetensors"


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda s, k: s.pop(k + ".slowed_qscale"), r"without .*slowed_qscale"),
        (lambda s, k: s.__setitem__(k + ".slowed_qcodes", s[k + ".slowed_qcodes"][:-3]), r"slowed_qcodes.*truncated"),
        (lambda s, k: s.__setitem__(k + ".slowed_qmeta", torch.tensor([1, 2, 99], dtype=torch.int32)), "qmeta"),
        (lambda s, k: s.__setitem__(k + ".slowed_qbook", s[k + ".slowed_qbook"] * float("nan")), "NaN or inf"),
    ],
)
def test_corrupt_compressed_file_names_file_and_key(tmp_path, edit, match):
    f = _saved(tmp_path)
    state = load_file(f)
    key = sorted(C.compressed_modules(state))[0]
    edit(state, key)
    save_file(state, f)
    with pytest.raises(ValueError, match=match) as err:
        PeftModel.from_pretrained(build_tiny("llama", tmp_path / "b"), tmp_path / "a")
    assert str(f) in str(err.value) and key in str(err.value)


def test_truncated_compressed_file_names_the_file(tmp_path):
    f = _saved(tmp_path)
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated"):
        PeftModel.from_pretrained(build_tiny("llama", tmp_path / "b"), tmp_path / "a")


def test_adapter_folder_card_is_ours(tmp_path):
    pm = train(get_peft_model(build_tiny("llama", tmp_path / "base"), config(save_precision="4bit")), steps=1)
    pm.slowed_card_info = {"training": {"arm": "slowed", "max_steps": 1}, "metrics": {"refusal ratio": 0.9}}
    pm.save_pretrained(tmp_path / "a")
    card = (tmp_path / "a" / "README.md").read_text()
    assert "More Information Needed" not in card
    for text in ("SLowED", "pip install slowed-peft", "import slowed_peft", "max_steps", "refusal ratio", "4 bits"):
        assert text in card, text
    assert slowed_peft.tuner.card.CARD_MARKER in card


def test_embedded_base_is_named_by_its_hub_id(tmp_path):
    """A base folder that records its Hub id (what ``base_models`` writes for the embedded SmolLM2) is saved as that
    id, in adapter_config.json and in the card's metadata."""
    base_dir = tmp_path / "smollm2-135m-instruct"
    base = build_tiny("llama", base_dir)
    (base_dir / "slowed_source.json").write_text(json.dumps({"hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct"}))
    pm = get_peft_model(base, config())
    pm.save_pretrained(tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    card = (tmp_path / "a" / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and str(tmp_path) not in card


def test_converted_embedded_model_records_its_hub_id(tmp_path):
    from slowed_peft import base_models
    from slowed_peft.tuner.persist import hub_id_of

    folder = tmp_path / "smollm2-135m-instruct"
    folder.mkdir()
    base_models._write_source_marker("smollm2-135m-instruct", folder)
    assert hub_id_of(str(folder)) == base_models.hub_id_for("smollm2-135m-instruct")
    assert hub_id_of(str(tmp_path)) is None and hub_id_of(None) is None


def _scale_book(factor: float, scale: float):
    def edit(state, key):
        state[key + ".slowed_qbook"] = state[key + ".slowed_qbook"] * factor
        state[key + ".slowed_qscale"] = torch.full_like(state[key + ".slowed_qscale"], scale)

    return edit


@pytest.mark.parametrize(
    "edit, match",
    [
        # each part finite, their product not: every logit would be NaN
        (_scale_book(1e36, 65504.0), r"reconstructed delta .*not finite"),
        # ΔW finite, but ‖ΔW‖² overflows float32: the trust region would scale the delta to zero (a silent no-op)
        (_scale_book(1e30, 1.0), r"norm .*overflows"),
    ],
)
def test_tampered_book_and_scale_are_refused_naming_file_and_key(tmp_path, edit, match):
    f = _saved(tmp_path)
    state = load_file(f)
    key = sorted(C.compressed_modules(state))[0]
    edit(state, key)
    save_file(state, f)
    with pytest.raises(ValueError, match=match) as err:
        PeftModel.from_pretrained(build_tiny("llama", tmp_path / "b"), tmp_path / "a")
    assert str(f) in str(err.value) and key in str(err.value)
