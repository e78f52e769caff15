"""How anchor bases are stored: once per group of layers reading the same input (q/k/v, gate/up), exact in fp32 or
re-orthonormalised from bf16, older per-layer files still loading, and clear errors for partial or edited files.

Bases are installed directly (``install_anchor``: random orthonormal, the same tensor for a group, as ``fit_anchor``
gives it), so these tests do not depend on how the fit computes them."""

from __future__ import annotations

import json
import os

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from slowed_peft import SLowEDConfig
from slowed_peft.tuner.anchor import install_anchor
from slowed_peft.tuner.anchor_storage import LOW_PRECISION_TOL, encode_reference

from testing_utils import batch, build_tiny


K = 6  # protected directions per layer (tiny Llama: input widths 32 and 64)
FILE = "adapter_model.safetensors"


def _orthonormal(rows: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(rows, K, generator=g, dtype=torch.float64))[0].float().contiguous()


def _groups(model) -> list[list]:
    """Per decoder layer: the groups of projections reading one input, and the single ones."""
    out = []
    for block in model.base_model.model.model.layers:
        attn, mlp = block.self_attn, block.mlp
        out += [[attn.q_proj, attn.k_proj, attn.v_proj], [attn.o_proj], [mlp.gate_proj, mlp.up_proj], [mlp.down_proj]]
    return out


@pytest.fixture
def base_path(tmp_path):
    path = tmp_path / "base"
    build_tiny("llama", path)
    return path


def _base(base_path):
    return AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32).eval()


def _anchored(base_path, r=None, copies=False, **config):
    """A random (non-zero) anchored adapter; each group's layers get one basis (``copies``: equal, distinct tensors)."""
    settings = dict(target_modules="all-linear", r=r, anchor_rank=K, init_weights=False, max_drift=0.2)
    torch.manual_seed(0)
    model = get_peft_model(_base(base_path), SLowEDConfig(**{**settings, **config}))
    for i, group in enumerate(_groups(model)):
        q = _orthonormal(group[0].in_features, seed=i)
        for layer in group:
            install_anchor(layer, "default", q.clone() if copies else q)
    return model.eval()


def _logits(model, x):
    with torch.no_grad():
        return model(x).logits


def _to_per_layer(path) -> None:
    """Rewrite a saved adapter in the layout written before bases were shared: every layer's basis under its own key."""
    state = load_file(path / FILE)
    for key in [k for k in state if k.endswith(".slowed_anchor_ref")]:
        owner = bytes(state.pop(key).tolist()).decode()
        state[key.removesuffix("_ref")] = state[f"{owner}.slowed_anchor"].clone()
    save_file(state, path / FILE, metadata={"format": "pt"})


@pytest.mark.parametrize("r", [None, 4])
def test_one_basis_per_group_in_the_file(base_path, tmp_path, r):
    model = _anchored(base_path, r=r)
    model.save_pretrained(tmp_path / "shared")
    state = load_file(tmp_path / "shared" / FILE)
    bases = [k for k in state if k.endswith(".slowed_anchor")]
    refs = {k: bytes(v.tolist()).decode() for k, v in state.items() if k.endswith(".slowed_anchor_ref")}
    assert len(bases) == 2 * 4 and len(refs) == 2 * 3  # per block: q, o, gate, down stored; k, v, up refer
    prefix = "base_model.model.model.layers.0"
    assert refs[f"{prefix}.self_attn.k_proj.slowed_anchor_ref"] == f"{prefix}.self_attn.q_proj"
    assert refs[f"{prefix}.mlp.up_proj.slowed_anchor_ref"] == f"{prefix}.mlp.gate_proj"
    assert all(v.dtype == torch.uint8 and v.dim() == 1 for k, v in state.items() if k in refs)
    # bytes: the per-layer layout stores 6 more 32 x K float32 bases
    (tmp_path / "old").mkdir()
    for name in os.listdir(tmp_path / "shared"):
        (tmp_path / "old" / name).write_bytes((tmp_path / "shared" / name).read_bytes())
    _to_per_layer(tmp_path / "old")
    saved = os.path.getsize(tmp_path / "old" / FILE) - os.path.getsize(tmp_path / "shared" / FILE)
    assert 6 * 32 * K * 4 - 6 * 64 < saved < 6 * 32 * K * 4  # a reference: its module path, under 64 bytes


def test_fp32_round_trip_is_bit_identical_and_groups_share_a_buffer(base_path, tmp_path):
    model = _anchored(base_path)
    x = batch()
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(_base(base_path), tmp_path)
    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(_logits(loaded, x), _logits(model, x))
    attn = loaded.base_model.model.model.layers[1].self_attn
    q, k, o = (m.slowed_anchor["default"] for m in (attn.q_proj, attn.k_proj, attn.o_proj))
    assert q is k and q is not o  # one buffer per group in memory too, as after the fit


def test_equal_bases_in_distinct_tensors_are_stored_once(base_path, tmp_path):
    model = _anchored(base_path, copies=True)
    model.save_pretrained(tmp_path)
    assert sum(k.endswith(".slowed_anchor") for k in load_file(tmp_path / FILE)) == 8


def test_per_layer_file_still_loads(base_path, tmp_path):
    """The layout written before bases were shared (one basis per layer, no references) loads unchanged."""
    model = _anchored(base_path, r=4)
    model.save_pretrained(tmp_path)
    _to_per_layer(tmp_path)
    state = load_file(tmp_path / FILE)
    assert sum(k.endswith(".slowed_anchor") for k in state) == 14 and not any("_ref" in k for k in state)
    loaded = PeftModel.from_pretrained(_base(base_path), tmp_path)
    before, after = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(_logits(loaded, batch()), _logits(model, batch()))


def test_partial_file_names_the_missing_basis(base_path, tmp_path):
    model = _anchored(base_path)
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / FILE)
    owner = "base_model.model.model.layers.1.self_attn.q_proj.slowed_anchor"
    save_file({k: v for k, v in state.items() if k != owner}, tmp_path / FILE, metadata={"format": "pt"})
    with pytest.raises(
        ValueError, match=r"layers\.1\.self_attn\.k_proj\.slowed_anchor_ref.*no .*q_proj\.slowed_anchor"
    ) as err:
        PeftModel.from_pretrained(_base(base_path), tmp_path)
    assert str(tmp_path / FILE) in str(err.value)
    # a whole group gone (basis and references): PEFT-level key check names the layers
    group = ("layers.1.self_attn.q_proj.", "layers.1.self_attn.k_proj.", "layers.1.self_attn.v_proj.")
    kept = {k: v for k, v in state.items() if not (any(g in k for g in group) and "slowed_anchor" in k)}
    save_file(kept, tmp_path / FILE, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"3 missing key\(s\).*layers\.1\.self_attn\.q_proj\.slowed_anchor"):
        PeftModel.from_pretrained(_base(base_path), tmp_path)


def test_edited_references_are_refused(base_path, tmp_path):
    model = _anchored(base_path)
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / FILE)
    ref = "base_model.model.model.layers.0.mlp.up_proj.slowed_anchor_ref"

    def load_with(**changes):
        save_file({**state, **changes}, tmp_path / FILE, metadata={"format": "pt"})
        return PeftModel.from_pretrained(_base(base_path), tmp_path)

    # pointing at a basis of another width (down_proj reads 64 features, up_proj 32): the shape check names both
    with pytest.raises(ValueError, match=r"does not fit this base model: module 'model\.layers\.0\.mlp\.up_proj'.*"
                                         r"\(64, 6\) in the checkpoint but \(32, "):  # fmt: skip
        load_with(**{ref: encode_reference("base_model.model.model.layers.0.mlp.down_proj")})
    with pytest.raises(ValueError, match="must be a 1-D uint8 tensor"):
        load_with(**{ref: torch.zeros(3)})
    with pytest.raises(ValueError, match="both an anchor basis"):
        load_with(
            **{ref.removesuffix("_ref"): state["base_model.model.model.layers.0.mlp.gate_proj.slowed_anchor"].clone()}
        )


def test_bf16_storage_round_trip(base_path, tmp_path):
    model = _anchored(base_path, anchor_save_dtype="bf16")
    model.save_pretrained(tmp_path / "bf16")
    _anchored(base_path).save_pretrained(tmp_path / "fp32")
    state = load_file(tmp_path / "bf16" / FILE)
    assert {v.dtype for k, v in state.items() if k.endswith(".slowed_anchor")} == {torch.bfloat16}
    assert json.loads((tmp_path / "bf16" / "adapter_config.json").read_text())["anchor_save_dtype"] == "bf16"
    bases = 3 * 32 * K + 64 * K  # stored per block (q, o, gate: 32 wide; down: 64), in elements
    saved = os.path.getsize(tmp_path / "fp32" / FILE) - os.path.getsize(tmp_path / "bf16" / FILE)
    assert abs(saved - 2 * bases * 2) <= 64  # 2 blocks, 2 bytes less per element (the header differs by a few bytes)

    loaded = PeftModel.from_pretrained(_base(base_path), tmp_path / "bf16")
    for group_before, group_after in zip(_groups(model), _groups(loaded)):
        q0, q = group_before[0].slowed_anchor["default"], group_after[0].slowed_anchor["default"]
        assert q.dtype == torch.float32 and all(m.slowed_anchor["default"] is q for m in group_after)
        assert (q.T.double() @ q.double() - torch.eye(K, dtype=torch.float64)).abs().max() < 1e-6
        assert (q - q0).abs().max() < 2 * 2**-9  # column by column next to the trained basis (bf16 rounding)
        cosines = torch.linalg.svdvals(q0.double().T @ q.double())  # cosines of the principal angles
        assert float(torch.arccos(cosines.min().clamp(max=1.0))) < 4e-3
    # the guarantee, with the loaded basis: ΔW·x = 0 for x in span(Q), to float32 round-off
    for layer in [m for group in _groups(loaded) for m in group]:
        delta, q = layer.get_delta_weight("default"), layer.slowed_anchor["default"]
        assert float((delta @ q).abs().max()) <= 1e-6 * float(delta.abs().max())
        x = q @ torch.randn(K, 3, generator=torch.Generator().manual_seed(0))
        base = layer.get_base_layer()
        with torch.no_grad():
            torch.testing.assert_close(layer(x.T), base(x.T), atol=1e-5, rtol=1e-5)
    # the price: logits move slightly (the delta is projected with a basis ~2^-9 rad from the trained one)
    x = batch()
    assert (_logits(loaded, x) - _logits(model, x)).abs().max() < 1e-2


def test_bf16_basis_far_from_orthonormal_is_refused(base_path, tmp_path):
    _anchored(base_path, anchor_save_dtype="bf16").save_pretrained(tmp_path)
    state = load_file(tmp_path / FILE)
    key = "base_model.model.model.layers.0.mlp.down_proj.slowed_anchor"
    state[key] = (state[key].float() * (1 + 4 * LOW_PRECISION_TOL)).bfloat16()
    save_file(state, tmp_path / FILE, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"down_proj\.slowed_anchor.*orthonormal"):
        PeftModel.from_pretrained(_base(base_path), tmp_path)


def test_anchor_save_dtype_is_validated():
    with pytest.raises(ValueError, match=r"anchor_save_dtype.*'fp16'"):
        SLowEDConfig(anchor_save_dtype="fp16")
    assert SLowEDConfig().anchor_save_dtype == "fp32"
