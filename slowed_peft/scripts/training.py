"""The one training path: every script (``slowed-sft``, the demo, the alignment, the replication) trains through
:func:`train_arm`, so an arm defined in :mod:`slowed_peft.scripts.arguments` runs the same way everywhere."""

from __future__ import annotations

from typing import Any, Optional, Union

from transformers import PreTrainedModel, TrainerCallback
from trl import ModelConfig

from ..masking.config import SLowEDSFTConfig
from ..masking.ema import ParameterEMACallback
from ..masking.trainer import SLowEDTrainer
from .arguments import ARMS, SLowEDArguments, apply_arm_to_training_args, peft_config_for_arm


def ema_callback(trainer: SLowEDTrainer) -> Optional[ParameterEMACallback]:
    """The EMA of an ``ema`` arm's trainer (None for other arms): its :meth:`~ParameterEMACallback.swapped`
    evaluates the averaged weights during training."""
    return next((c for c in trainer.callback_handler.callbacks if isinstance(c, ParameterEMACallback)), None)


__all__ = ["ema_callback", "study_training_args", "train_arm"]


def train_arm(
    arm: SLowEDArguments,
    model: PreTrainedModel,
    tokenizer: Any,
    training_args: SLowEDSFTConfig,
    train_dataset: Any,
    eval_dataset: Any = None,
    callbacks: Optional[list[TrainerCallback]] = None,
    resume_from_checkpoint: Union[str, bool, None] = None,
    model_config: Optional[ModelConfig] = None,
) -> SLowEDTrainer:
    """Train ``model`` as ``arm`` says — its adapter (none for ``full``) and its masking, set on ``training_args`` in
    place — and return the trainer: ``trainer.model`` is the trained model, ``state.log_history`` holds the loss,
    drift and masked fraction. Saving is the caller's (a script saves an adapter, the alignment a whole model).

    Without masking and without an adapter, ``SLowEDTrainer`` computes exactly ``SFTTrainer``'s loss and gradients.
    An ``ema`` arm's trainer ends with the averaged weights in ``trainer.model`` (pass your own
    ``ParameterEMACallback`` first in ``callbacks`` to evaluate the average during training, see
    ``CheckpointEvalCallback(weights=ema.swapped)``); the ``l2sp`` arm sets ``training_args.weight_decay``; the
    ``lora`` arm reads TRL's LoRA fields from ``model_config`` when given. The ``anchored`` arm fits its anchor on the
    wrapped model before training (``trainer.anchor_report``), ``replay`` mixes refusal rows into the data and
    ``corda`` runs CorDA's covariance pass first (:mod:`slowed_peft.scripts.anchoring`).
    """
    from .anchoring import fit_arm_anchor, prepare_data, prepare_model

    apply_arm_to_training_args(arm, training_args)
    callbacks = list(callbacks or [])
    if ARMS[arm.arm].ema and not any(isinstance(c, ParameterEMACallback) for c in callbacks):
        callbacks.insert(0, ParameterEMACallback(arm.ema_decay))  # before any callback that evaluates at step end
    peft_config = peft_config_for_arm(arm, model_config)
    seed = training_args.seed
    prepare_model(arm, model, tokenizer, peft_config, train_dataset, seed)
    trainer = SLowEDTrainer(
        model=model,
        args=training_args,
        train_dataset=prepare_data(arm, train_dataset, seed),
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    trainer.anchor_report = fit_arm_anchor(arm, trainer.model, tokenizer, train_dataset, seed)
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    return trainer


def study_training_args(output_dir: str, *, seed: int, **settings: Any) -> SLowEDSFTConfig:
    """Trainer settings the alignment and the replication share, plus ``settings``: no checkpoints and no reporting
    (they measure in-process), float32 on the GPU if there is one, rows cut at 384 tokens, and no gradient
    checkpointing (TRL's default recomputes every forward: +25% step time for the same gradients)."""
    import torch

    defaults: dict[str, Any] = dict(
        output_dir=output_dir,
        seed=seed,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        max_length=384,
        bf16=False,
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=False,
    )
    return SLowEDSFTConfig(**{**defaults, **settings})


def distillation_rows(name: str, split: str, limit: Optional[int]):
    """CoT rows whose user turn is exactly the evaluation prompt, so training and scoring ask the same question."""
    from ..data import load_cot_dataset
    from ..data.formats import user_turn
    from ..eval.tasks import numeric_prompt

    ds = load_cot_dataset(name, split=split, limit=limit, conversational=True)
    if name in ("svamp", "gsm8k"):
        ds = ds.map(lambda r: {"prompt": user_turn(numeric_prompt(r["prompt"][0]["content"]))})
    return ds
