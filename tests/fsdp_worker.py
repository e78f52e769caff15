"""Worker for tests/test_fsdp.py: FSDP2 (fully_shard) on CPU/gloo, aggressive steps, then drift on sharded weights."""

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard


sys.path.insert(0, os.path.dirname(__file__))
from peft import get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

import slowed_peft  # noqa: E402
from slowed_peft import SLowEDConfig  # noqa: E402

from testing_utils import tiny_config  # noqa: E402


def main(out_dir: str, granularity: str, r: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama"))
    cfg = SLowEDConfig(
        target_modules="all-linear",
        r=None if r == "none" else int(r),
        slow_factor=1.0,
        max_drift=0.05,
        drift_granularity=granularity,
    )
    peft_model = get_peft_model(model, cfg)
    for layer in peft_model.base_model.model.model.layers:
        fully_shard(layer)
    fully_shard(peft_model)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1.0)
    gen = torch.Generator().manual_seed(rank)
    for _ in range(5):
        x = torch.randint(0, 96, (2, 12), generator=gen)
        peft_model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    drift = slowed_peft.weight_drift(peft_model)
    result = {
        "max": drift.max,
        "mean": drift.mean,
        "row_max": drift.row_max,
        "sharded": all(type(p).__name__ == "DTensor" for p in params),
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
