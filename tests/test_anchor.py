"""The safety anchor: ΔW·x = 0 on the anchor prompts' inputs, on every path (dense, low-rank, fused and autograd
gradients, merged, 4-bit saved and reloaded, resumed from a Trainer checkpoint), and clear errors for bad input."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

import slowed_peft
from slowed_peft import SLowEDConfig, anchor_dataloader, fit_anchor
from slowed_peft.tuner.functional import project_out
from slowed_peft.tuner.layer import SLowEDLayer

from testing_utils import build_char_tokenizer


ANCHOR_PROMPT = "hi there"  # 27 chat-formatted tokens: fewer than the hidden size, so its span can be protected fully
OTHER = torch.tensor([[5, 17, 33, 60, 41, 22, 9, 70, 12, 50, 44, 31, 8, 66, 20, 91, 14, 38, 27, 55]])


def _wide_llama(seed: int = 0):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def _anchor_ids(tok) -> torch.Tensor:
    text = tok.apply_chat_template(
        [{"role": "user", "content": ANCHOR_PROMPT}], tokenize=False, add_generation_prompt=True
    )
    return torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])


def _fit(model, tok, prompts=(ANCHOR_PROMPT,), **kwargs):
    return fit_anchor(model, anchor_dataloader(tok, list(prompts)), show_progress_bar=False, **kwargs)


def _anchored(tok, **config):
    settings = dict(target_modules="all-linear", slow_factor=1.0, max_drift=None, anchor_energy=1.0)
    model = get_peft_model(_wide_llama(), SLowEDConfig(**{**settings, **config}))
    report = _fit(model, tok)
    return model, report


def _train(model, steps: int = 6, lr: float = 1e-2) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    for _ in range(steps):
        model(OTHER, labels=OTHER).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def _logits(model, ids) -> torch.Tensor:
    model.eval()  # GPT-2 has dropout
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("r", [None, 4])
@pytest.mark.parametrize("max_drift", [None, 0.02])
def test_full_span_anchor_keeps_anchor_logits_while_others_change(tok, r, max_drift):
    model, report = _anchored(tok, r=r, max_drift=max_drift)
    ids = _anchor_ids(tok)
    assert report.tokens == ids.shape[1] and report.min_energy == pytest.approx(1.0)
    before, other_before = _logits(model, ids), _logits(model, OTHER)
    _train(model)
    assert (_logits(model, OTHER) - other_before).abs().max() > 0.05  # it learned elsewhere
    torch.testing.assert_close(_logits(model, ids), before, atol=1e-5, rtol=1e-5)
    if max_drift is not None:  # the trust region applies to the projected delta and still holds
        assert slowed_peft.weight_drift(model).max <= max_drift * (1 + 1e-5)


def test_unanchored_adapter_is_unchanged_and_saves_no_basis(tok, tmp_path):
    """anchor_rank=None is the tuner as before: no buffer, no key in the file, the same outputs as a plain adapter."""
    model = get_peft_model(_wide_llama(), SLowEDConfig(target_modules="all-linear", init_weights=False))
    assert not any(getattr(m, "slowed_anchor", {}) for m in model.modules())
    model.save_pretrained(tmp_path)
    assert not [k for k in load_file(tmp_path / "adapter_model.safetensors") if "anchor" in k]
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["anchor_rank"] is None and config["anchor_energy"] is None


def test_merged_weights_keep_the_anchor(tok):
    model, _ = _anchored(tok)
    ids = _anchor_ids(tok)
    before = _logits(model, ids)
    _train(model)
    merged = model.merge_and_unload()
    torch.testing.assert_close(_logits(merged, ids), before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "4bit"])
def test_saved_and_reloaded_adapter_keeps_the_anchor(tok, tmp_path, precision):
    model, report = _anchored(tok, save_precision=precision)
    ids = _anchor_ids(tok)
    (before,) = (_logits(model, ids),)
    _train(model)
    trained_other = _logits(model, OTHER)
    model.save_pretrained(tmp_path)
    stored = load_file(tmp_path / "adapter_model.safetensors")
    anchors = {k: v for k, v in stored.items() if k.endswith("slowed_anchor")}  # q/k/v and gate/up: one basis each
    assert len(anchors) == 8 and {v.shape[1] for v in anchors.values()} == set(report.ranks.values())
    loaded = PeftModel.from_pretrained(_wide_llama(), tmp_path)
    torch.testing.assert_close(_logits(loaded, ids), before, atol=1e-5, rtol=1e-5)
    tol = 1e-5 if precision == "fp32" else 0.2  # the 4-bit delta is close to, not equal to, the trained one
    torch.testing.assert_close(_logits(loaded, OTHER), trained_other, atol=tol, rtol=0)


def test_fused_gradient_equals_autograd_of_the_projected_delta(tok):
    """The fused dense path's own backward gives D the gradient of ΔW = c(P(D))·P(D), on and off the trust region."""
    for max_drift in (None, 1e-4):  # 1e-4 binds after one step
        model, _ = _anchored(tok, max_drift=max_drift, init_weights=False)
        layer = model.base_model.model.model.layers[0].mlp.down_proj
        x = torch.randn(3, 5, layer.in_features)
        layer.train()
        layer(x).square().sum().backward()
        fused = layer.slowed_delta["default"].grad.clone()
        d = layer.slowed_delta["default"].detach().clone().requires_grad_(True)
        q = layer.slowed_anchor["default"]
        dp = project_out(d, q)
        if max_drift is None:
            delta = dp
        else:
            w0n = layer.slowed_w0_norm["default"]
            delta = dp * torch.clamp(max_drift * w0n / dp.norm(), max=1.0)
        out = torch.nn.functional.linear(x, layer.base_layer.weight + delta)
        out.square().sum().backward()
        torch.testing.assert_close(fused, d.grad, atol=1e-4, rtol=1e-4)
        assert (project_out(fused, q) - fused).abs().max() < 1e-5  # nothing pushes D into the protected span


def test_conv1d_layers_are_anchored(tok):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=96, n_embd=64, n_layer=2, n_head=4)).eval()
    model = get_peft_model(base, SLowEDConfig(target_modules=["c_attn", "c_proj", "c_fc"], slow_factor=1.0,
                                              max_drift=None, anchor_energy=1.0))  # fmt: skip
    _fit(model, tok)
    ids = _anchor_ids(tok)
    before, other = _logits(model, ids), _logits(model, OTHER)
    _train(model)
    moved = (_logits(model, OTHER) - other).abs().max()
    assert (_logits(model, ids) - before).abs().max() < 1e-3 * moved  # float32 rounding of a large trained delta


def test_resumed_trainer_run_keeps_the_anchor_and_equals_the_unbroken_run(tok, tmp_path):
    from datasets import Dataset

    from slowed_peft.masking import SLowEDSFTConfig, SLowEDTrainer

    from testing_utils import TRAINER_ARGS

    rows = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"q{i}"}], "completion": [{"role": "assistant", "content": "ab" * (i + 2)}]}
         for i in range(8)]
    )  # fmt: skip
    ids = _anchor_ids(tok)

    def trainer(out, max_steps, save):
        model, _ = _anchored(tok)
        args = dict(TRAINER_ARGS, save_strategy="steps" if save else "no", save_steps=2, learning_rate=1e-2,
                    lr_scheduler_type="constant")  # fmt: skip
        cfg = SLowEDSFTConfig(output_dir=str(out), per_device_train_batch_size=2, max_steps=max_steps, **args)
        return SLowEDTrainer(model=model, args=cfg, train_dataset=rows, processing_class=tok)

    start = _logits(_anchored(tok)[0], ids)
    unbroken = trainer(tmp_path / "a", 4, False)
    unbroken.train()
    first = trainer(tmp_path / "b", 2, True)
    first.train()
    resumed = trainer(tmp_path / "b", 4, False)
    for layer in resumed.model.modules():  # a different basis before resuming: the checkpoint's must win
        if isinstance(layer, SLowEDLayer):
            q, _ = torch.linalg.qr(torch.randn(layer.in_features, 3))
            layer.slowed_anchor["default"] = q
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-2"))
    for a, b in zip(unbroken.model.state_dict().items(), resumed.model.state_dict().items()):
        torch.testing.assert_close(a[1], b[1], atol=1e-6, rtol=1e-5, msg=a[0])
    torch.testing.assert_close(_logits(resumed.model.eval(), ids), start, atol=1e-5, rtol=1e-5)


def test_rank_and_energy_choose_the_size(tok):
    _, full = _anchored(tok)
    _, capped = _anchored(tok, anchor_rank=5, anchor_energy=None)
    _, half = _anchored(tok, anchor_energy=0.5, anchor_rank=None)
    assert set(capped.ranks.values()) == {5}
    assert all(half.ranks[n] <= full.ranks[n] for n in full.ranks) and half.mean_rank < full.mean_rank
    assert all(e >= 0.5 for e in half.energy.values())


def test_shared_inputs_share_one_basis(tok):
    model, _ = _anchored(tok, anchor_rank=6, anchor_energy=None)
    attn = model.base_model.model.model.layers[1].self_attn
    q, k = attn.q_proj.slowed_anchor["default"], attn.k_proj.slowed_anchor["default"]
    assert torch.equal(q, k)


def test_errors_are_clear(tok, tmp_path):
    with pytest.raises(ValueError, match="anchor_rank"):
        SLowEDConfig(anchor_rank=0)
    with pytest.raises(ValueError, match="anchor_energy"):
        SLowEDConfig(anchor_energy=1.5)
    plain = get_peft_model(_wide_llama(), SLowEDConfig(target_modules="all-linear"))
    with pytest.raises(ValueError, match="has no safety anchor"):
        _fit(plain, tok)
    model = get_peft_model(_wide_llama(), SLowEDConfig(target_modules="all-linear", anchor_rank=64))
    with pytest.raises(ValueError, match="No anchor prompts"):
        _fit(model, tok, [])
    with pytest.raises(ValueError, match="empty or not strings"):
        _fit(model, tok, ["ok", " "])
    with pytest.raises(ValueError, match="anchor_rank=64 is not below the input width 64"):
        _fit(model, tok)
    # training an anchored adapter that was never fitted would protect nothing
    unfitted = get_peft_model(_wide_llama(), SLowEDConfig(target_modules="all-linear", anchor_rank=4))
    unfitted.train()
    with pytest.raises(ValueError, match="no fitted bases"):
        unfitted(OTHER, labels=OTHER)
    # non-finite activations name the layer
    broken = get_peft_model(_wide_llama(), SLowEDConfig(target_modules="all-linear", anchor_rank=4))
    with torch.no_grad():
        broken.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        _fit(broken, tok)


def test_anchor_from_another_base_or_edited_file_is_refused(tok, tmp_path):
    model, _ = _anchored(tok, anchor_rank=4, anchor_energy=None)
    model.save_pretrained(tmp_path / "a")
    torch.manual_seed(1)
    narrow = AutoModelForCausalLM.from_config(
        LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2)
    )  # fmt: skip
    with pytest.raises(ValueError, match="does not fit this base model"):
        PeftModel.from_pretrained(narrow, tmp_path / "a")
    path = tmp_path / "a" / "adapter_model.safetensors"
    state = load_file(path)
    key = next(k for k in state if "slowed_anchor" in k)
    state[key] = state[key] * 2.0  # no longer orthonormal: would not be a projection
    save_file(state, path)
    with pytest.raises(ValueError, match="orthonormal"):
        PeftModel.from_pretrained(_wide_llama(), tmp_path / "a")


def test_prompt_and_response_tokens(tok):
    model = get_peft_model(
        _wide_llama(), SLowEDConfig(target_modules="all-linear", anchor_rank=4, anchor_tokens="prompt+response")
    )
    from slowed_peft.scripts.anchoring import response_dataloader

    report = fit_anchor(model, response_dataloader(model, tok, [ANCHOR_PROMPT], max_new_tokens=5))
    assert report.tokens == _anchor_ids(tok).shape[1] + 5  # a random model never emits EOS in 5 tokens here


def test_two_adapters_each_keep_their_anchor(tok):
    """Active together, each anchored delta is projected with its own basis (fused multi-delta path)."""
    model, _ = _anchored(tok)
    model.add_adapter("other", SLowEDConfig(target_modules="all-linear", slow_factor=1.0, max_drift=None,
                                            anchor_energy=1.0))  # fmt: skip
    _fit(model, tok, adapter_name="other")
    model.base_model.set_adapter(["default", "other"])
    ids = _anchor_ids(tok)
    before = _logits(model, ids)
    _train(model, steps=3)
    torch.testing.assert_close(_logits(model, ids), before, atol=1e-4, rtol=1e-4)
