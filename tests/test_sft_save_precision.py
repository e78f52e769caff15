"""``slowed-sft`` writes its final dense adapter in 4 bits by default
(``--save_precision fp32`` for the exact one), its card says which, and its trainer checkpoints stay exact."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM


def keys(folder) -> list[str]:
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        return list(f.keys())


def run_sft(tiny_dir, out, *extra):
    from slowed_peft.scripts.sft import run as sft_run

    argv = [
        "--model_name_or_path",
        tiny_dir,
        "--dtype",
        "float32",
        "--dataset_name",
        "demo",
        "--dataset_limit",
        "8",
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "2",
        "--max_length",
        "96",
        "--logging_steps",
        "1",
        "--eval_strategy",
        "no",
        "--report_to",
        "none",
        "--use_cpu",
        "true",
        "--bf16",
        "false",
        "--gradient_checkpointing",
        "false",
        "--learning_rate",
        "1e-3",
        "--anchor_rank",
        "8",  # the default arm is the safety anchor; the tiny model is 32 wide
        "--output_dir",
        str(out),
        *extra,
    ]
    return sft_run(argv)


@pytest.mark.parametrize(
    "flag, stored, card",
    [((), "slowed_qcodes", "at most 4 bits"), (("--save_precision", "fp32"), "slowed_delta", "exact float32")],
)
def test_slowed_sft_final_adapter_is_4bit_by_default_and_exact_on_request(tmp_path, tiny_dir, flag, stored, card):
    out = tmp_path / "out"
    trainer = run_sft(tiny_dir, out, "--save_strategy", "steps", "--save_steps", "1", *flag)
    assert any(stored in k for k in keys(out)), keys(out)
    assert json.loads((out / "adapter_config.json").read_text())["save_precision"] == (flag[1] if flag else "4bit")
    assert card in (out / "README.md").read_text()
    for step in (1, 2):  # checkpoints: always exact
        assert any("slowed_delta" in k for k in keys(out / f"checkpoint-{step}"))
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), str(out)).eval()
    x = torch.randint(3, 90, (2, 12))
    with torch.no_grad():
        expected = trainer.model.eval()(input_ids=x).logits
        got = reloaded(input_ids=x).logits
    if flag:
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    else:  # lossy but close
        kl = torch.nn.functional.kl_div(
            got.log_softmax(-1), expected.log_softmax(-1), log_target=True, reduction="batchmean"
        )
        assert kl < 1e-3


def test_save_precision_flag_is_checked(tiny_dir, tmp_path):
    with pytest.raises((ValueError, SystemExit)):
        run_sft(tiny_dir, tmp_path / "out", "--save_precision", "2bit")
