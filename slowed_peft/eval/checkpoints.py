"""Both sides of the trade-off at training checkpoints: a ``TrainerCallback`` that evaluates during training.

At step 0 and every ``eval_steps`` steps (and at the last step) :class:`CheckpointEvaluator` records, on a PeftModel:
refusal ratio on held-out harmful prompts, ``harmful_kl`` against the initial model (its step-0 responses are reused,
so the KL never regenerates them), false refusals on benign prompts, greedy-decoding accuracy on reasoning examples,
teacher-forced NLL of held-out teacher rationales (a low-noise measure of how much of the teacher was learned, and the
same for every arm — no entropy masking), and the weight drift ``max ‖W − W0‖/‖W0‖``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Optional

import torch
from transformers import TrainerCallback

from .generation import eval_mode, logits_from, model_device, pad_token_id
from .reasoning import evaluate_reasoning
from .safety import harmful_kl, refusal_ratio


__all__ = ["CheckpointEvalCallback", "CheckpointEvaluator", "completion_nll"]


@torch.no_grad()
def completion_nll(model, tokenizer, rows: Sequence[Mapping[str, Any]], batch_size: int = 8) -> float:
    """Mean per-token NLL of the completions of prompt-completion ``rows`` (tokenized exactly as TRL does)."""
    from ..masking.annotate import tokenize_like_trl

    encoded = [tokenize_like_trl(dict(r), tokenizer) for r in rows]
    encoded = [e for e in encoded if sum(e.get("completion_mask", [])) > 0]
    if not encoded:
        raise ValueError("completion_nll: no row has completion tokens to score.")
    encoded.sort(key=lambda e: len(e["input_ids"]))  # similar lengths share a batch: little padding, same sum
    pad, device = pad_token_id(tokenizer), model_device(model)
    total, count = 0.0, 0
    with eval_mode(model):
        for start in range(0, len(encoded), batch_size):
            batch = encoded[start : start + batch_size]
            width = max(len(e["input_ids"]) for e in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attn = torch.zeros_like(ids)
            labels = torch.full_like(ids, -100)
            for i, e in enumerate(batch):
                n = len(e["input_ids"])
                ids[i, :n] = torch.tensor(e["input_ids"])
                attn[i, :n] = 1
                labels[i, :n] = torch.where(torch.tensor(e["completion_mask"]).bool(), ids[i, :n], -100)
            first = min(e["completion_mask"].index(1) for e in batch) - 1  # earliest logit that predicts a target
            logits = logits_from(model, ids.to(device), attn.to(device), max(first, 0))[:, :-1].float()
            target = labels[:, max(first, 0) + 1 :].to(device)
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="sum")
            total += float(nll)
            count += int((target != -100).sum())
    return total / count


class CheckpointEvaluator:
    """Evaluates a model (normally a PeftModel around the initial model) on fixed safety and reasoning sets."""

    def __init__(
        self,
        tokenizer,
        harmful: Sequence[str],
        benign: Sequence[str] = (),
        reasoning: Optional[Mapping[str, Sequence[Any]]] = None,
        nll_rows: Sequence[Mapping[str, Any]] = (),
        safety_max_new_tokens: int = 32,
        reasoning_max_new_tokens: int = 160,
        batch_size: int = 16,
        nll_batch_size: int = 8,
        kl_cache_bytes: int = 2**30,
    ) -> None:
        if not harmful:
            raise ValueError("CheckpointEvaluator needs at least one harmful prompt.")
        self.tokenizer = tokenizer
        self.harmful, self.benign = list(harmful), list(benign)
        self.reasoning = {k: list(v) for k, v in (reasoning or {}).items()}
        self.nll_rows = list(nll_rows)
        self.safety_tokens, self.reasoning_tokens = safety_max_new_tokens, reasoning_max_new_tokens
        self.batch_size, self.nll_batch_size = batch_size, nll_batch_size
        self.initial_responses: Optional[list[str]] = None  # the initial model's harmful responses (for the KL)
        # The initial model's log-probs on those responses, kept across checkpoints (and arms sharing this
        # evaluator, hence one initial model) when they fit in ``kl_cache_bytes``: the KL then costs one forward.
        self.kl_cache_bytes = kl_cache_bytes
        self._kl_cache: Optional[dict[int, torch.Tensor]] = None
        self._kl_cache_sized = False

    def _initial_kl_cache(self, model) -> Optional[dict[int, torch.Tensor]]:
        if not self._kl_cache_sized:
            tokens = sum(len(self.tokenizer(r, add_special_tokens=False)["input_ids"]) for r in self.initial_responses)
            vocab = model.get_output_embeddings().weight.shape[0]
            self._kl_cache = {} if tokens * vocab * 4 <= self.kl_cache_bytes else None
            self._kl_cache_sized = True
        return self._kl_cache

    def __call__(self, model, step: int = 0, reasoning: bool = True, benign: bool = True) -> dict[str, Any]:
        """One checkpoint's record; ``reasoning`` / ``benign`` turn the two slowest generation parts on or off."""
        from peft import PeftModel

        from ..tuner.drift import weight_drift

        started = clock = time.time()
        seconds: dict[str, float] = {}

        def lap(name: str) -> None:  # wall time per part, so a slow evaluation shows where its time goes
            nonlocal clock
            seconds[name], clock = round(time.time() - clock, 1), time.time()

        common = dict(max_new_tokens=self.safety_tokens, batch_size=self.batch_size)
        rr = refusal_ratio(model, self.tokenizer, self.harmful, **common)
        lap("refusal")
        record: dict[str, Any] = {"step": step, "refusal_ratio": rr["refusal_ratio"], "n_harmful": rr["n"]}
        if self.initial_responses is None:
            if step != 0:
                raise RuntimeError("CheckpointEvaluator must see the initial model (step 0) first.")
            self.initial_responses = rr["responses"]
        is_peft = isinstance(model, PeftModel)
        record["harmful_kl"] = (
            harmful_kl(
                model,
                self.tokenizer,
                self.harmful,
                responses=self.initial_responses,
                initial_log_probs=self._initial_kl_cache(model),
                **common,
            )
            if is_peft and step > 0
            else 0.0
        )
        lap("harmful_kl")
        if benign and self.benign:
            record["false_refusal"] = refusal_ratio(model, self.tokenizer, self.benign, **common)["refusal_ratio"]
            lap("false_refusal")
        if reasoning and self.reasoning:
            scores = evaluate_reasoning(
                model,
                self.tokenizer,
                examples=self.reasoning,
                batch_size=self.batch_size,
                max_new_tokens=self.reasoning_tokens,
            )
            record.update({f"acc/{task}": res["accuracy"] for task, res in scores.items()})
            lap("reasoning")
        if self.nll_rows:
            record["cot_nll"] = completion_nll(model, self.tokenizer, self.nll_rows, batch_size=self.nll_batch_size)
            lap("cot_nll")
        if is_peft:
            try:
                record["drift_max"] = float(weight_drift(model).max)
            except ValueError:  # not a SLowED adapter
                pass
        record["eval_seconds"] = round(time.time() - started, 1)
        record["eval_seconds_by_part"] = seconds
        return record


class CheckpointEvalCallback(TrainerCallback):
    """Runs a :class:`CheckpointEvaluator` before training and every ``eval_steps`` optimizer steps.

    Records accumulate in ``self.records``; ``reasoning_every`` > 1 runs the (slow) reasoning generation only on
    every n-th checkpoint, and at the last step unless ``reasoning_at_end=False``; ``benign_every`` does the same
    for the benign false-refusal check (always at the first and the last checkpoint). ``weights(model)``, a context
    manager, swaps in the weights to evaluate (``ParameterEMACallback.swapped`` for the EMA baseline).
    """

    def __init__(
        self,
        evaluator: CheckpointEvaluator,
        eval_steps: int,
        reasoning_every: int = 1,
        reasoning_at_end: bool = True,
        benign_every: int = 1,
        log=print,
        weights: Optional[Callable[[Any], AbstractContextManager]] = None,
    ) -> None:
        for name, value in (
            ("eval_steps", eval_steps),
            ("reasoning_every", reasoning_every),
            ("benign_every", benign_every),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
        self.evaluator, self.eval_steps, self.reasoning_every = evaluator, eval_steps, reasoning_every
        self.reasoning_at_end, self.benign_every = reasoning_at_end, benign_every
        self.records: list[dict[str, Any]] = []
        self.log = log
        self.weights = weights  # e.g. ParameterEMACallback.swapped: evaluate other weights than the trained ones

    def _run(self, model, step: int, last: bool) -> None:
        index = step // self.eval_steps
        at_end = last and self.reasoning_at_end
        with self.weights(model) if self.weights is not None else nullcontext(model) as evaluated:
            record = self.evaluator(
                evaluated,
                step,
                reasoning=at_end or (not last and index % self.reasoning_every == 0),
                benign=last or index % self.benign_every == 0,
            )
        self.records.append(record)
        if self.log is not None:
            shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}
            self.log(f"[checkpoint] {shown}")

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self.records:
            self._run(model, 0, last=False)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step, last = state.global_step, state.global_step >= state.max_steps
        if step % self.eval_steps == 0 or last:
            self._run(model, step, last)
