"""Worker for tests/test_distributed_anchor.py: ``slowed-sft`` (the recipe's entry point) plus what each rank saw.

Run as ``accelerate launch ... accelerate_worker.py --config RECIPE ...`` (or plain ``python`` for the 1-process
reference). Besides the recipe's own outputs it writes, into ``$ANCHOR_DUMP``, per rank:

- ``rank{i}-fitted.safetensors``: every layer's anchor basis right after the arm fitted it (before the Trainer shards
  or wraps the model: that happens inside ``train()``);
- ``rank{i}-trained.safetensors``: the bases the model holds after training (what the forward passes used);
- ``rank{i}.json``: accelerate's distributed type, the class of the wrapped model and of the trainable parameters,
  so a test can check that FSDP2 really sharded them (``DTensor``) rather than falling back to DDP.

``SLOWED_TEST_FSDP_ON_CPU=1`` lets accelerate's FSDP path run on CPU. accelerate 1.16 turns FSDP on only for
accelerator devices (``AcceleratorState``: ``MULTI_GPU``/``MULTI_XPU``/...); on a CPU-only host it silently trains
with DDP (``use_cpu``) or as independent single processes (without it). The switch reports a ``MULTI_GPU`` state on
gloo with the device pinned to CPU (``ACCELERATE_TORCH_DEVICE``), so the launcher's FSDP2 config, accelerate's
``fsdp2_prepare_model`` (``fully_shard`` per decoder layer, rank 0's state dict broadcast) and the Trainer's
FSDP save run unchanged. Launch with ``--use_cpu false`` so ``TrainingArguments`` does not ask for the CPU path.
"""

import json
import os
import sys

from safetensors.torch import save_file
from torch import nn


def anchor_bases(model: nn.Module) -> dict:
    """``{layer name: basis}`` of every SLowED layer's anchor (full tensors, on CPU)."""
    from slowed_peft.tuner.layer import SLowEDLayer

    bases = {}
    for name, module in model.named_modules():
        if isinstance(module, SLowEDLayer):
            for adapter, q in module.slowed_anchor.items():
                q = q.full_tensor() if hasattr(q, "full_tensor") else q
                bases[f"{name.removeprefix('base_model.model.')}.{adapter}"] = q.detach().cpu().clone()
    return bases


def fsdp_on_cpu() -> None:
    """accelerate's FSDP path on a CPU-only host (see the module docstring)."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    def prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        return "gloo", DistributedType.MULTI_GPU

    PartialState._prepare_backend = prepare_backend
    os.environ["ACCELERATE_TORCH_DEVICE"] = "cpu"


def main(argv: list[str]) -> None:
    from slowed_peft.scripts import anchoring, sft

    dump = os.environ["ANCHOR_DUMP"]
    rank = int(os.environ.get("RANK", "0"))
    if os.environ.get("SLOWED_TEST_FSDP_ON_CPU") == "1":
        fsdp_on_cpu()
    fit = anchoring.fit_arm_anchor  # train_arm imports it from the module at call time

    def fit_and_dump(*args, **kwargs):
        report = fit(*args, **kwargs)
        model = next(a for a in (*args, *kwargs.values()) if isinstance(a, nn.Module))
        save_file(anchor_bases(model), os.path.join(dump, f"rank{rank}-fitted.safetensors"))
        return report

    anchoring.fit_arm_anchor = fit_and_dump
    trainer = sft.run(argv)
    save_file(anchor_bases(trainer.model), os.path.join(dump, f"rank{rank}-trained.safetensors"))
    info = {
        "distributed_type": str(trainer.accelerator.distributed_type).rsplit(".", 1)[-1],
        "wrapper": type(trainer.model_wrapped).__name__,
        "param_types": sorted({type(p).__name__ for p in trainer.model.parameters() if p.requires_grad}),
    }
    with open(os.path.join(dump, f"rank{rank}.json"), "w") as f:
        json.dump(info, f)


if __name__ == "__main__":
    main(sys.argv[1:])
