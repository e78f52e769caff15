"""SLowED distillation with TRL: ``slowed-sft`` / ``python recipes/slowed_sft.py``.

Parses ``SLowEDScriptArguments``, ``SLowEDSFTConfig``, ``ModelConfig`` and ``SLowEDArguments`` with TRL's parser
(``--config NAME_OR_PATH`` plus CLI overrides), loads the CoT data and the student, trains the chosen arm through
:func:`~slowed_peft.scripts.training.train_arm`, saves the adapter (a dense SLowED adapter in 4 bits per entry unless
``--save_precision fp32``; checkpoints are always exact), the log history and a loss/drift plot, and optionally pushes
to the Hub.

```bash
slowed-sft --config smollm2-135m-demo                                    # CPU demo: embedded SmolLM2-135M-Instruct
slowed-sft --config qwen2.5-1.5b --arm slowed --output_dir Qwen2.5-1.5B-SLowED   # the paper's students (GPU)
for arm in sft slow lem slowed; do slowed-sft --config smollm2-135m-demo --arm $arm --output_dir runs/$arm; done
```
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Optional

from transformers.utils import logging
from trl import ModelConfig

from ..data import load_cot_dataset
from ..masking.config import SLowEDSFTConfig
from ..masking.trainer import SLowEDTrainer
from .arguments import ARMS, SLowEDArguments, SLowEDScriptArguments
from .configs import SLowEDParser
from .training import train_arm


logger = logging.get_logger(__name__)


@dataclass
class SLowEDRecipeArguments(SLowEDArguments):
    """:class:`SLowEDArguments` plus how the recipe writes its final adapter."""

    save_precision: Literal["4bit", "fp32"] = field(
        default="4bit",
        metadata={
            "help": "How the final dense SLowED adapter is written: 4bit (at most 4 bits per entry, <= 0.25x the "
            "wrapped layers' bf16 bytes, reconstructed on load) or fp32 (exact). Low-rank adapters and trainer "
            "checkpoints are always exact."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.save_precision not in ("4bit", "fp32"):
            raise ValueError(f"`save_precision` must be '4bit' or 'fp32'; got save_precision={self.save_precision!r}.")


def make_parser(subparsers=None) -> SLowEDParser:
    """The recipe's parser (or its ``sft`` sub-command when ``subparsers`` is given)."""
    dataclass_types = (SLowEDScriptArguments, SLowEDSFTConfig, ModelConfig, SLowEDRecipeArguments)
    if subparsers is not None:
        return subparsers.add_parser("sft", help="SLowED distillation", dataclass_types=dataclass_types)
    return SLowEDParser(dataclass_types)


def load_datasets(script_args: SLowEDScriptArguments, training_args: SLowEDSFTConfig):
    """Train (and, when evaluation is on, test) split of the CoT source as TRL prompt-completion data."""
    common = dict(path=script_args.dataset_path, conversational=script_args.conversational)
    train = load_cot_dataset(
        script_args.dataset_name, split=script_args.dataset_train_split, limit=script_args.dataset_limit, **common
    )
    evaluation = None
    if training_args.eval_strategy != "no":
        evaluation = load_cot_dataset(
            script_args.dataset_name, split=script_args.dataset_test_split, limit=script_args.eval_limit, **common
        )
    return train, evaluation


def _init_deepspeed_comm_for_zero3() -> None:
    """Under ZeRO-3, ``from_pretrained`` partitions weights while loading (``zero.Init``), which needs DeepSpeed's
    process group already up; on CPU (gloo) the Trainer only creates torch's, so the world size would read as 1."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        import deepspeed

        if not deepspeed.comm.is_initialized():
            deepspeed.init_distributed()


def main(
    script_args: SLowEDScriptArguments,
    training_args: SLowEDSFTConfig,
    model_args: ModelConfig,
    slowed_args: SLowEDArguments,
) -> SLowEDTrainer:
    """Train one arm and save it; returns the trainer (its ``state.log_history`` holds loss, drift, masked fraction)."""
    from ..base_models import hub_id_for, load_model
    from ..eval.plots import plot_training
    from ..hub import push_adapter

    push, hub_id = training_args.push_to_hub, training_args.hub_model_id
    training_args.push_to_hub = False  # pushed once at the end with our model card (TRL's card drops library_name)
    if push and not hub_id:
        raise ValueError("--push_to_hub needs --hub_model_id (the repo to push the adapter to).")
    if push and ARMS[slowed_args.arm].adapter is None:
        raise ValueError(f"--push_to_hub pushes an adapter; arm={slowed_args.arm} trains the whole model, without one.")
    _init_deepspeed_comm_for_zero3()
    model, tokenizer = load_model(model_args.model_name_or_path, dtype=model_args.dtype or "float32")
    train, evaluation = load_datasets(script_args, training_args)
    trainer = train_arm(
        slowed_args,
        model,
        tokenizer,
        training_args,
        train,
        evaluation,
        resume_from_checkpoint=training_args.resume_from_checkpoint,
        model_config=model_args,
    )
    set_save_precision(trainer.model, getattr(slowed_args, "save_precision", "4bit"))
    trainer.save_model(training_args.output_dir)  # its README.md (the SLowED card) says which precision
    history = trainer.state.log_history
    with open(os.path.join(training_args.output_dir, "log_history.json"), "w") as f:
        json.dump({"arm": slowed_args.arm, "log_history": history}, f, indent=2)
    if trainer.is_world_process_zero():
        if (
            plot_training(
                history,
                os.path.join(training_args.output_dir, "training_curves.png"),
                title=f"{slowed_args.arm}: {model_args.model_name_or_path}",
            )
            is None
        ):
            logger.warning(
                f"No step was logged (logging_steps={training_args.logging_steps}, "
                f"global_step={trainer.state.global_step}); training_curves.png was not written."
            )
    if push:
        push_adapter(trainer.model, hub_id, base_model_id=hub_id_for(model_args.model_name_or_path))
    return trainer


def set_save_precision(model, precision: str) -> None:
    """Make every SLowED adapter of ``model`` save in ``precision`` (``"4bit"`` / ``"fp32"``); other models untouched."""
    for config in getattr(model, "peft_config", {}).values():
        if getattr(config, "peft_type", None) == "SLOWED":
            config.save_precision = precision


def run(argv: Optional[Sequence[str]] = None) -> SLowEDTrainer:
    """Parse ``argv`` (default ``sys.argv[1:]``) and :func:`main`; returns the trainer."""
    from ..utils.allocator import keep_freed_memory

    keep_freed_memory()  # CPU steps stop page-faulting (slowed_peft.utils.allocator)
    script_args, training_args, model_args, slowed_args, _ = make_parser().parse_args_and_config(
        args=argv, return_remaining_strings=True
    )
    return main(script_args, training_args, model_args, slowed_args)


def cli() -> None:
    """``slowed-sft``: :func:`run`, then one line saying where the result is; exits 0 on success."""
    trainer = run()
    if trainer.is_world_process_zero():
        print(f"[slowed-sft] {trainer.state.global_step} steps; saved to {trainer.args.output_dir}")


if __name__ == "__main__":
    cli()
