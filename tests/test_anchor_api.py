"""The anchor's API in PEFT's shape: tokenized batches in any form give the same bases, computing
(``get_anchor_state_dict``) is separate from installing (``initialize_anchor_weights``), the state dict saves with
safetensors and reloads, the cache file is reused only when it matches, wrong types fail with a ``TypeError`` that
shows the new call, and the report reaches the log and the adapter card."""

from __future__ import annotations

import os

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig

from slowed_peft import (
    AnchorReport,
    SLowEDConfig,
    anchor_dataloader,
    fit_anchor,
    get_anchor_state_dict,
    initialize_anchor_weights,
)
from slowed_peft.tuner.layer import SLowEDLayer

from testing_utils import build_char_tokenizer


PROMPTS = ["hi there", "how are you today?", "ok"]


def _llama(hidden: int = 64, seed: int = 0):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=96, hidden_size=hidden, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(config).eval()


def _model(hidden: int = 64, **config):
    settings = dict(target_modules="all-linear", anchor_rank=6)
    return get_peft_model(_llama(hidden), SLowEDConfig(**{**settings, **config}))


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def _ids(tok) -> list[list[int]]:
    return [list(b) for batch in anchor_dataloader(tok, PROMPTS, batch_size=1) for b in batch["input_ids"].tolist()]


def _projector(state: dict, key: str) -> torch.Tensor:
    q = state[key].double()
    return q @ q.T


def _bases(model) -> dict[str, torch.Tensor]:
    return {n: m.slowed_anchor["default"] for n, m in model.named_modules() if isinstance(m, SLowEDLayer)}


def test_every_batch_form_gives_the_same_bases_and_counts(tok):
    ids = _ids(tok)
    reference = get_anchor_state_dict(_model(), anchor_dataloader(tok, PROMPTS), show_progress_bar=False)
    width = max(map(len, ids))
    right = [
        {
            "input_ids": [s + [0] * (width - len(s)) for s in ids],
            "attention_mask": [[1] * len(s) + [0] * (width - len(s)) for s in ids],
        }
    ]
    left = [
        {
            "input_ids": torch.tensor([[7] * (width - len(s)) + s for s in ids]),
            "attention_mask": torch.tensor([[0.0] * (width - len(s)) + [1.0] * len(s) for s in ids]),  # float mask
        }
    ]
    one_by_one = ({"input_ids": torch.tensor(s)} for s in ids)  # a generator of 1-D sequences, no mask
    for form in (right, left, one_by_one):
        state = get_anchor_state_dict(_model(), form, show_progress_bar=False)
        assert int(state["anchor:tokens"]) == sum(map(len, ids)) == int(reference["anchor:tokens"])
        assert int(state["anchor:sequences"]) == len(PROMPTS)
        for key in [k for k in reference if ":" not in k]:
            torch.testing.assert_close(_projector(state, key), _projector(reference, key), atol=1e-4, rtol=0)
    # padding counts only where the mask says so: a mask of ones over the padded batch changes the bases
    unmasked = [{"input_ids": right[0]["input_ids"]}]
    state = get_anchor_state_dict(_model(), unmasked, show_progress_bar=False)
    assert int(state["anchor:tokens"]) == len(ids) * width > int(reference["anchor:tokens"])


def test_compute_save_load_install_equals_fit(tok, tmp_path):
    fitted = _model()
    report = fit_anchor(fitted, anchor_dataloader(tok, PROMPTS), show_progress_bar=False)
    state = get_anchor_state_dict(_model(), anchor_dataloader(tok, PROMPTS), show_progress_bar=False)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert set(report.ranks) == {k for k in state if ":" not in k} and len(report.ranks) == 14
    save_file(state, tmp_path / "anchor.safetensors")  # a plain dict of tensors: safetensors writes it as it is
    fresh = _model()
    installed = initialize_anchor_weights(fresh, load_file(tmp_path / "anchor.safetensors"))
    assert isinstance(installed, AnchorReport)
    assert installed.ranks == report.ranks and installed.tokens == report.tokens and installed.prompts == 3
    assert installed.energy == pytest.approx(report.energy)
    for (name, q), ref in zip(_bases(fresh).items(), _bases(fitted).values()):
        assert torch.equal(q, ref), name
    attn = fresh.base_model.model.model.layers[0].self_attn  # q/k/v read one input: one storage after installing
    assert attn.q_proj.slowed_anchor["default"].data_ptr() == attn.v_proj.slowed_anchor["default"].data_ptr()
    assert all(0 < e <= 1 for e in installed.energy.values())


def test_cache_file_is_written_once_then_reused_only_when_it_matches(tok, tmp_path):
    cache = str(tmp_path / "sub" / "anchor.safetensors")
    first = fit_anchor(_model(), anchor_dataloader(tok, PROMPTS), cache_file=cache, show_progress_bar=False)
    assert os.path.isfile(cache) and os.listdir(tmp_path / "sub") == ["anchor.safetensors"]  # no temp file left

    def never():  # the second fit must not run the model: the cache holds the bases
        raise AssertionError("the cache file was not used")
        yield

    reused = _model()
    again = fit_anchor(reused, never(), cache_file=cache, show_progress_bar=False)
    assert again.ranks == first.ranks and again.tokens == first.tokens
    with pytest.raises(
        ValueError, match=r"file .*sub.* fitted with anchor_rank=6 \('anchor:rank'\); this adapter has anchor_rank=5"
    ):
        get_anchor_state_dict(_model(anchor_rank=5), never(), cache_file=cache)
    with pytest.raises(ValueError, match=r"anchor_tokens=prompt \('anchor:with_responses'\)"):
        get_anchor_state_dict(_model(anchor_tokens="prompt+response"), never(), cache_file=cache)
    with pytest.raises(ValueError, match=r"anchor cache file .*sub.*must be 32 × k; got shape \(64, 6\)"):
        get_anchor_state_dict(_model(hidden=32), never(), cache_file=cache)
    other_targets = get_peft_model(_llama(), SLowEDConfig(target_modules=["q_proj"], anchor_rank=6))
    with pytest.raises(
        ValueError, match=r"has a basis for 'model.layers.[^']*', not a layer of this adapter \(0 missing, 12 unknown"
    ):
        get_anchor_state_dict(other_targets, never(), cache_file=cache)
    with open(cache, "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        get_anchor_state_dict(_model(), never(), cache_file=cache)


def test_wrong_types_fail_with_the_new_call(tok):
    model = _model()
    with pytest.raises(TypeError, match=r"anchor_dataloader\(tokenizer, prompts\)"):
        fit_anchor(model, tok, PROMPTS)  # the old string form
    with pytest.raises(TypeError, match="not a list of strings"):
        fit_anchor(model, PROMPTS)
    with pytest.raises(TypeError, match="not a string"):
        get_anchor_state_dict(model, "hi there")
    with pytest.raises(TypeError, match="not one batch"):
        fit_anchor(model, {"input_ids": torch.tensor([[5, 6]])})
    with pytest.raises(TypeError, match="expected a peft.PeftModel"):
        fit_anchor(_llama(), anchor_dataloader(tok, PROMPTS))
    with pytest.raises(TypeError, match="expected a peft.PeftModel"):
        initialize_anchor_weights(model.base_model, {})
    with pytest.raises(TypeError, match="dict of str -> torch.Tensor"):
        initialize_anchor_weights(model, [1, 2])
    with pytest.raises(ValueError, match="batch 1 has no 'input_ids'"):
        fit_anchor(model, [{"input_ids": [[5, 6]]}, {"ids": [[5]]}], show_progress_bar=False)
    with pytest.raises(ValueError, match="no batches"):
        fit_anchor(model, [], show_progress_bar=False)
    with pytest.raises(ValueError, match="every token .* is masked"):
        fit_anchor(model, [{"input_ids": [[5, 6]], "attention_mask": [[0, 0]]}], show_progress_bar=False)
    with pytest.raises(ValueError, match="does not match input_ids"):
        fit_anchor(model, [{"input_ids": [[5, 6]], "attention_mask": [[1]]}], show_progress_bar=False)
    with pytest.raises(ValueError, match="'input_ids' must hold integer token ids; got torch.float32"):
        fit_anchor(model, [{"input_ids": torch.ones(1, 3)}], show_progress_bar=False)
    with pytest.raises(ValueError, match="must be \\[batch, length\\]; got shape \\(1, 1, 3\\)"):
        fit_anchor(model, [{"input_ids": torch.ones(1, 1, 3, dtype=torch.long)}], show_progress_bar=False)
    with pytest.raises(ValueError, match="not a rectangular tensor"):
        fit_anchor(model, [{"input_ids": [[5, 6], [7]]}], show_progress_bar=False)
    with pytest.raises(ValueError, match=r"no basis for layer 'model.layers.0.self_attn.q_proj'"):
        initialize_anchor_weights(model, {})
    assert all(q.shape[1] == 0 for q in _bases(model).values())  # nothing was installed by the failed calls


def test_forward_fn_runs_each_batch(tok):
    calls = []

    def forward_fn(model, batch):
        calls.append(batch["input_ids"].shape)
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    state = get_anchor_state_dict(
        _model(), anchor_dataloader(tok, PROMPTS, batch_size=2), forward_fn=forward_fn, show_progress_bar=False
    )
    reference = get_anchor_state_dict(_model(), anchor_dataloader(tok, PROMPTS), show_progress_bar=False)
    assert len(calls) == 2
    key = "model.layers.1.mlp.down_proj"
    torch.testing.assert_close(_projector(state, key), _projector(reference, key), atol=1e-4, rtol=0)
    with pytest.raises(TypeError, match="forward_fn must be callable"):
        fit_anchor(_model(), anchor_dataloader(tok, PROMPTS), PROMPTS)


def test_progress_bar_over_batches(tok, capsys):
    fit_anchor(_model(), anchor_dataloader(tok, PROMPTS, batch_size=1), show_progress_bar=True)
    err = capsys.readouterr().err
    assert "fitting the anchor" in err and "3/3" in err
    fit_anchor(_model(), anchor_dataloader(tok, PROMPTS, batch_size=1), show_progress_bar=False)
    assert "fitting the anchor" not in capsys.readouterr().err


def test_report_summary_and_card(tok, tmp_path):
    model = _model()
    report = fit_anchor(model, anchor_dataloader(tok, PROMPTS), show_progress_bar=False)
    d = report.to_dict()
    ranks = list(report.ranks.values())
    assert d["layers"] == 14 and (d["rank_min"], d["rank_max"]) == (min(ranks), max(ranks)) and d["rank_max"] == 6
    assert d["prompts"] == 3 and d["tokens"] == report.tokens > 3 and d["energy_min"] == round(report.min_energy, 4)
    line = report.summary()
    assert "14 layers" in line and f"{min(ranks)}/" in line and "3 prompts" in line and "\n" not in line
    model.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    section = card.split("## Safety anchor", 1)[1]
    assert "| anchor_rank | 6 |" in section and "| anchor_tokens | prompt |" in section
    assert f"| directions per layer (min / mean / max) | {min(ranks)} / " in section
    assert f"| anchor tokens | {report.tokens} |" in section and "| anchor prompts | 3 |" in section


def test_the_anchored_arm_prints_its_report(tok, capsys):
    from slowed_peft.scripts.anchoring import fit_arm_anchor
    from slowed_peft.scripts.arguments import SLowEDArguments

    arm = SLowEDArguments(arm="anchored", anchor_source="template", anchor_rank=4, anchor_limit=3)
    report = fit_arm_anchor(arm, _model(anchor_rank=4), tok, None, seed=0)
    out = capsys.readouterr().out
    assert report.prompts == 3 and f"[anchored] fitted on template prompts: {report.summary()}" in out
