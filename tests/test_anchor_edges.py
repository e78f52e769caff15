"""The safety anchor's sharp edges (issue 31, point 5), each refused or made true: a basis covering a layer's whole
input width, round-off directions in float32 fits, the hint for an unfitted adapter, re-fitting a trained adapter,
fitting a sharded model, silent truncation, unknown adapter names, the harmful source's data error, and the bound a
bf16 merge keeps."""

from __future__ import annotations

import inspect
import re

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig

import slowed_peft
from slowed_peft import SLowEDConfig, anchor_dataloader, fit_anchor, initialize_anchor_weights
from slowed_peft.tuner.layer import SLowEDLayer

from testing_utils import build_char_tokenizer, tiny_config


OTHER = torch.tensor([[5, 17, 33, 60, 41, 22, 9, 70, 12, 50, 44, 31, 8, 66, 20, 91, 14, 38, 27, 55]])
LONG_PROMPTS = ["".join(chr(97 + (i * 7 + j * 3) % 26) for j in range(40)) for i in range(20)]  # ~1000 tokens


def _llama(seed: int = 0, dtype=torch.float32):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(config).eval().to(dtype)


def _model(dtype=torch.float32, **config):
    settings = dict(target_modules="all-linear", slow_factor=1.0, max_drift=None)
    return get_peft_model(_llama(dtype=dtype), SLowEDConfig(**{**settings, **config}))


def _fit(model, tok, prompts=("hi there",), **kwargs):
    return fit_anchor(model, anchor_dataloader(tok, list(prompts)), show_progress_bar=False, **kwargs)


def _bases(model) -> dict[str, torch.Tensor]:
    return {n: m.slowed_anchor["default"].clone() for n, m in model.named_modules() if isinstance(m, SLowEDLayer)}


def _train(model, steps: int = 4, lr: float = 1e-2) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        model(OTHER, labels=OTHER).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def _anchor_ids(tok, prompt: str = "hi there") -> torch.Tensor:
    return next(iter(anchor_dataloader(tok, [prompt])))["input_ids"]


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def test_an_energy_share_that_covers_a_whole_layer_is_refused(tok):
    """anchor_energy=1.0 on ~1000 tokens spans every input direction of most layers: those could never learn."""
    with pytest.raises(
        ValueError, match=r"whole input width of \d+ layer\(s\): model\.layers\.0\.\w+\.\w+ \(64 of 64\)"
    ):
        _fit(_model(anchor_energy=1.0), tok, LONG_PROMPTS)
    report = _fit(_model(anchor_energy=0.9), tok, LONG_PROMPTS)  # a share below 1 leaves room to learn
    widths = {n.removeprefix("base_model.model."): m.in_features for n, m in _model(anchor_energy=0.9).named_modules()
              if isinstance(m, SLowEDLayer)}  # fmt: skip
    assert all(report.ranks[n] < widths[n] for n in report.ranks)


def test_float32_fits_keep_no_round_off_directions(tok):
    """anchor_rank=40 alone (float32 products) on inputs of rank <= 19: never more directions than the float64 fit
    finds (no round-off directions), inside its span, the same energy share to 1e-5, and a share of at most 1. (Real
    directions below float32's floor, ~1e-6 of the top eigenvalue, may be left out: they hold < 1e-5 of the energy.)"""
    prompt = "hi"  # 19 chat-formatted tokens
    tokens = _anchor_ids(tok, prompt).shape[1]
    rank_only, exact = _model(anchor_rank=40), _model(anchor_rank=40, anchor_energy=1.0)  # float32 / float64 products
    report, reference = _fit(rank_only, tok, [prompt]), _fit(exact, tok, [prompt])
    assert report.tokens == tokens == 19 and max(reference.ranks.values()) <= tokens
    assert all(report.ranks[n] <= reference.ranks[n] for n in report.ranks)
    assert sum(report.ranks.values()) >= sum(reference.ranks.values()) - 6
    assert all(e <= 1.0 for e in report.energy.values())
    assert all(abs(report.energy[n] - reference.energy[n]) < 1e-5 for n in report.energy)
    for (name, q), ref in zip(_bases(rank_only).items(), _bases(exact).values()):
        q, ref = q.double(), ref.double()
        # span(Q) inside the exact span, up to float32 rounding of the weakest kept directions (noise / gap)
        assert float((q - ref @ (ref.T @ q)).abs().max()) < 1e-2, name


def test_the_unfitted_adapter_error_says_what_to_call_and_following_it_works(tok):
    from slowed_peft.masking import SLowEDTrainer

    peft_model = _model(anchor_rank=4)
    peft_model.train()
    with pytest.raises(ValueError, match="no fitted bases") as info:
        peft_model(OTHER, labels=OTHER)
    message = str(info.value)
    (call,) = re.findall(r"`(slowed_peft\.fit_anchor\(.*?\))`", message)
    trainer_params = set(inspect.signature(SLowEDTrainer.__init__).parameters)
    named = set(re.findall(r"(\w+)=", message)) - {"anchor_rank"}
    assert named <= trainer_params, f"the message names arguments that do not exist: {named - trainer_params}"
    exec(call, {"slowed_peft": slowed_peft, "peft_model": peft_model, "tokenizer": tok, "prompts": ["hi there"]})
    peft_model.train()
    peft_model(OTHER, labels=OTHER).loss.backward()  # now it trains
    assert all(m.slowed_anchor["default"].shape[1] > 0 for m in peft_model.modules() if isinstance(m, SLowEDLayer))


def test_refitting_a_trained_adapter_is_refused_unless_asked(tok):
    model = _model(anchor_energy=1.0)
    _fit(model, tok)
    _fit(model, tok)  # before training (delta zero) a re-fit changes nothing and is allowed
    ids = _anchor_ids(tok)
    with torch.no_grad():
        before = model(ids).logits
    _train(model)
    bases = _bases(model)
    with pytest.raises(ValueError, match=r"already has a fitted anchor and a non-zero delta .* overwrite=True"):
        _fit(model, tok, ["something else entirely"])
    state = slowed_peft.get_anchor_state_dict(model, anchor_dataloader(tok, ["other"]), show_progress_bar=False)
    with pytest.raises(ValueError, match="non-zero delta"):
        initialize_anchor_weights(model, state)
    assert all(torch.equal(q, bases[n]) for n, q in _bases(model).items())  # nothing changed
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before, atol=1e-5, rtol=1e-5)
    _fit(model, tok, ["something else entirely"], overwrite=True)
    assert any(not torch.equal(q, bases[n]) for n, q in _bases(model).items())


def test_fitting_a_sharded_model_is_refused_and_fitting_before_sharding_trains(tok, tmp_path):
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:

        def sharded(fit_first: bool):
            torch.manual_seed(0)
            config = SLowEDConfig(target_modules="all-linear", anchor_rank=4)
            model = get_peft_model(AutoModelForCausalLM.from_config(tiny_config("llama")), config)
            if fit_first:
                _fit(model, tok)
            for layer in model.base_model.model.model.layers:
                fully_shard(layer)
            fully_shard(model)
            return model

        late = sharded(fit_first=False)
        with pytest.raises(ValueError, match="already sharded with FSDP. Fit the anchor before `fully_shard`"):
            _fit(late, tok)
        with pytest.raises(ValueError, match="already sharded"):
            initialize_anchor_weights(late, {})
        early = sharded(fit_first=True)
        early.train()
        early(input_ids=OTHER % 96, labels=OTHER % 96).loss.backward()
        deltas = [p for n, p in early.named_parameters() if "slowed_" in n]
        assert len(deltas) == 14 and all(p.requires_grad and p.grad is not None for p in deltas)
    finally:
        dist.destroy_process_group()


def test_cut_prompts_warn_with_their_count(tok):
    with pytest.warns(UserWarning, match=r"2 of 3 anchor sequence\(s\) are longer than max_length=20 tokens"):
        loader = anchor_dataloader(tok, ["a" * 50, "b", "c" * 60], max_length=20)
    assert max(b["input_ids"].shape[1] for b in loader) == 20


def test_an_unknown_adapter_name_lists_the_adapters(tok):
    with pytest.raises(ValueError, match=r"no adapter named 'nope' \(adapters: \['default'\]\)"):
        _fit(_model(anchor_rank=4), tok, adapter_name="nope")


def test_the_harmful_source_error_names_what_reaches_it(tmp_path, monkeypatch):
    from slowed_peft.scripts.anchoring import anchor_prompts
    from slowed_peft.scripts.arguments import SLowEDArguments

    monkeypatch.setenv("SLOWED_DATA_DIR", str(tmp_path))  # an empty data folder and no bundled copy
    monkeypatch.setattr("slowed_peft.utils.paths.BUNDLED_DATA", tmp_path / "not-shipped")
    monkeypatch.setattr("slowed_peft.data.readers.BUNDLED_DATA", tmp_path / "not-shipped")
    with pytest.raises(ValueError) as info:
        anchor_prompts(SLowEDArguments(arm="anchored", anchor_source="harmful"))
    message = str(info.value)
    assert "SLOWED_DATA_DIR" in message and "advbench/harmful_behaviors.csv" in message
    assert "path=" not in message and "data_dir=" not in message  # no script flag reaches those


def test_a_bf16_merge_keeps_the_anchor_to_one_rounding_of_the_merged_weight(tok):
    """Unmerged, the delta is applied in float32 and the anchor prompt's logits are the base's exactly. Merged into
    bf16, each layer differs from the base on protected inputs by at most one bf16 rounding of the merged weight:
    |(W_merged − W0)·x|_i <= 2^-8 · Σ_j |W_merged,ij|·|x_j|; end to end that moves the anchor prompt's logits by a
    small fraction of what training moved elsewhere."""
    model = _model(dtype=torch.bfloat16, anchor_energy=1.0)
    _fit(model, tok)
    ids = _anchor_ids(tok)
    with torch.no_grad(), model.disable_adapter():
        base_logits, other_before = model(ids).logits.float(), model(OTHER).logits.float()
    _train(model, steps=6)
    with torch.no_grad():
        unmerged = model(ids).logits.float()
        moved_elsewhere = float((model(OTHER).logits.float() - other_before).abs().max())
    assert torch.equal(unmerged, base_logits)
    inputs, handles = {}, []
    layers = {n: m for n, m in model.named_modules() if isinstance(m, SLowEDLayer)}
    for name, layer in layers.items():
        handles.append(layer.register_forward_pre_hook(lambda _m, a, n=name: inputs.setdefault(n, a[0].detach())))
    with torch.no_grad(), model.disable_adapter():
        model(ids)
    for handle in handles:
        handle.remove()
    w0 = {n: m.get_base_layer().weight.detach().float().clone() for n, m in layers.items()}
    merged = model.merge_and_unload()
    modules = dict(merged.named_modules())
    for name in layers:
        wm = modules[name.removeprefix("base_model.model.")].weight.detach().float()
        x = inputs[name].reshape(-1, inputs[name].shape[-1]).float()
        error = (x @ (wm - w0[name]).T).abs()
        bound = 2.0**-8 * (x.abs() @ wm.abs().T)
        assert bool((error <= bound).all()), name
    with torch.no_grad():
        moved_anchor = float((merged(ids).logits.float() - base_logits).abs().max())
    assert 0 < moved_anchor < 0.1 * moved_elsewhere


@pytest.mark.parametrize("transposed", [False, True])
def test_projection_is_exact_under_bf16_autocast(transposed):
    """The paper configs train under bf16 autocast: the projection must still run in float32, or ~3e-3 of the delta's
    action on span(Q) survives (autocast's bf16 matmuls)."""
    from slowed_peft.tuner.functional import project_out, project_out_

    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(512, 64, generator=g, dtype=torch.float64))
    q = q.float()
    d = torch.randn(1024, 512, generator=g)
    d = d.T.contiguous() if transposed else d
    on_span = (lambda m: q.T @ m) if transposed else (lambda m: m @ q)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        projected = project_out(d, q, transposed)
        grad = project_out_(d.clone(), q, transposed)
    for out in (projected, grad):
        assert out.dtype == torch.float32
        assert float(on_span(out).abs().max()) <= 1e-5 * float(on_span(d).abs().max())
