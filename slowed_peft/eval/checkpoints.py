"""Both sides of the trade-off at training checkpoints: a ``TrainerCallback`` that evaluates during training.

At step 0, then every ``eval_steps`` steps or at every epoch end (and at the last step) :class:`CheckpointEvaluator`
records, on a PeftModel: refusal ratio on held-out harmful prompts (under two judges, with the attack-success
rate), ``harmful_kl`` against the initial model (its step-0 responses are reused, so the KL never regenerates them),
false refusals on benign prompts, greedy-decoding accuracy on reasoning examples, teacher-forced NLL of held-out
teacher rationales (a low-noise measure of how much of the teacher was learned, and the same for every arm — no
entropy masking), and the weight drift ``max ‖W − W0‖/‖W0‖``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Optional

import torch
from transformers import TrainerCallback

from .generation import eval_mode, logits_from, model_device, pad_token_id
from .reasoning import evaluate_reasoning
from .safety import attack_success_rate, harmful_kl, refusal_flags, refusal_ratio


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
    """Evaluates a model (normally a PeftModel around the initial model) on fixed safety and reasoning sets — the one
    checkpoint evaluator of the package: ``slowed-frontier``, ``slowed-replicate`` and ``slowed-demo`` all use it.

    Each call returns one record: ``refusal_ratio`` on ``harmful`` under the marker judge, ``strict_refusal_ratio``
    under the strict judge (the answer begins with a refusal) and ``attack_success`` (it begins "Sure, here is/are";
    ``harmful_responses`` kept when ``keep_responses``, for paired intervals and re-scoring), ``harmful_kl`` against
    the initial model's responses, ``false_refusal`` on ``benign``, ARC-style log-likelihood accuracy on
    ``capability`` items (``arc_acc``, ``arc_hits``), greedy accuracy on ``reasoning`` tasks (``acc/<task>``), greedy
    answers to ``generation`` examples (``format_share``: the share in the teacher's form "So the answer is N.",
    ``gen_accuracy``), held-out rationale NLL (``cot_nll``) and ``drift_max``.
    """

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
        capability: Sequence[tuple[str, list[str], int]] = (),
        generation: Sequence[Any] = (),
        generation_max_new_tokens: int = 128,
        keep_responses: bool = False,
    ) -> None:
        if not harmful:
            raise ValueError("CheckpointEvaluator needs at least one harmful prompt.")
        from .tasks import ReasoningExample

        self.tokenizer = tokenizer
        self.harmful, self.benign = list(harmful), list(benign)
        self.reasoning = {k: list(v) for k, v in (reasoning or {}).items()}
        self.nll_rows = list(nll_rows)
        self.capability = list(capability)
        self.generation = [ReasoningExample.coerce(e) for e in generation]
        self.safety_tokens, self.reasoning_tokens = safety_max_new_tokens, reasoning_max_new_tokens
        self.generation_tokens = generation_max_new_tokens
        self.batch_size, self.nll_batch_size = batch_size, nll_batch_size
        self.keep_responses = keep_responses
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

    def __call__(
        self,
        model,
        step: int = 0,
        reasoning: bool = True,
        benign: bool = True,
        kl: bool = True,
        epoch: Optional[float] = None,
    ) -> dict[str, Any]:
        """One checkpoint's record. ``reasoning`` (reasoning tasks and generation), ``benign`` (false refusals and
        the capability items) and ``kl`` turn the slower parts on or off; refusals and NLL are always measured."""
        from peft import PeftModel

        from ..tuner.drift import weight_drift

        started = clock = time.time()
        seconds: dict[str, float] = {}

        def lap(name: str) -> None:  # wall time per part, so a slow evaluation shows where its time goes
            nonlocal clock
            seconds[name], clock = round(time.time() - clock, 1), time.time()

        common = dict(max_new_tokens=self.safety_tokens, batch_size=self.batch_size)
        record: dict[str, Any] = {"step": step} if epoch is None else {"step": step, "epoch": epoch}
        rr = refusal_ratio(model, self.tokenizer, self.harmful, **common)
        lap("refusal")
        strict = refusal_flags(rr["responses"], "strict")
        record.update(
            refusal_ratio=rr["refusal_ratio"],
            strict_refusal_ratio=sum(strict) / len(strict),
            attack_success=attack_success_rate(rr["responses"]),
            n_harmful=rr["n"],
        )
        if self.keep_responses:
            record["harmful_responses"] = rr["responses"]
        if self.initial_responses is None:
            if step != 0:
                raise RuntimeError("CheckpointEvaluator must see the initial model (step 0) first.")
            self.initial_responses = rr["responses"]
        if kl:
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
            rb = refusal_ratio(model, self.tokenizer, self.benign, **common)
            record["false_refusal"] = rb["refusal_ratio"]
            if self.keep_responses:
                record["benign_responses"] = rb["responses"]
            lap("false_refusal")
        if benign and self.capability:
            from .likelihood import choice_loglik_accuracy

            cap = choice_loglik_accuracy(model, self.tokenizer, self.capability)
            record.update(arc_acc=cap["accuracy"], arc_hits=cap["hits"])
            lap("capability")
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
        if reasoning and self.generation:
            record.update(self._generation(model))
            lap("generation")
        if self.nll_rows:
            record["cot_nll"] = completion_nll(model, self.tokenizer, self.nll_rows, batch_size=self.nll_batch_size)
            lap("cot_nll")
        try:
            record["drift_max"] = float(weight_drift(model).max)
        except (ValueError, AttributeError):  # LoRA or the plain base model: no SLowED layer
            pass
        record["eval_seconds"] = round(time.time() - started, 1)
        record["eval_seconds_by_part"] = seconds
        return record

    def _generation(self, model) -> dict[str, Any]:
        """Greedy answers to held-out questions: the share in the teacher's form ("So the answer is N.") and
        accuracy — learning that shows in generation, not only in teacher-forced NLL."""
        from .generation import generate_batched
        from .reasoning import score_example

        prompts = [e.prompt for e in self.generation]
        outputs = generate_batched(
            model,
            self.tokenizer,
            prompts,
            max_new_tokens=self.generation_tokens,
            batch_size=min(len(prompts), 32),
            show_progress=False,
        )
        hits = [score_example(o, e) for o, e in zip(outputs, self.generation)]
        forms = ["so the answer is" in o.lower() for o in outputs]
        return {
            "format_share": sum(forms) / len(forms),
            "gen_accuracy": sum(hits) / len(hits),
            "format_hits": forms,
            "gen_hits": hits,
            "generations": outputs,
        }


def _every(name: str, value: Optional[int]) -> Optional[int]:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be an integer >= 1 or None, got {value!r}.")
    return value


class CheckpointEvalCallback(TrainerCallback):
    """Runs a :class:`CheckpointEvaluator` before training (unless ``at_start=False``) and every ``eval_steps``
    optimizer steps — or, with ``eval_steps=None``, at the end of each of the trainer's own epochs — and at the last.

    Records accumulate in ``self.records`` (each with ``step`` and ``epoch``). ``reasoning_every`` runs the (slow)
    reasoning and generation parts only on every n-th checkpoint (``None``: never but at the end), and at the last
    step unless ``reasoning_at_end=False``; ``benign_every`` (false refusals, capability) and ``kl_every`` do the
    same, always at the first and the last checkpoint. ``weights(model)``, a context manager, swaps in the weights
    to evaluate (``ParameterEMACallback.swapped`` for the EMA baseline).
    """

    def __init__(
        self,
        evaluator: CheckpointEvaluator,
        eval_steps: Optional[int] = None,
        reasoning_every: Optional[int] = 1,
        reasoning_at_end: bool = True,
        benign_every: Optional[int] = 1,
        log=print,
        weights: Optional[Callable[[Any], AbstractContextManager]] = None,
        kl_every: Optional[int] = 1,
        at_start: bool = True,
    ) -> None:
        self.eval_steps = _every("eval_steps", eval_steps)
        self.reasoning_every = _every("reasoning_every", reasoning_every)
        self.benign_every = _every("benign_every", benign_every)
        self.kl_every = _every("kl_every", kl_every)
        self.evaluator, self.reasoning_at_end, self.at_start = evaluator, reasoning_at_end, at_start
        self.records: list[dict[str, Any]] = []
        self.log = log
        self.weights = weights  # e.g. ParameterEMACallback.swapped: evaluate other weights than the trained ones
        self._index = 0  # checkpoints so far (the one before training included)

    def _run(self, model, step: int, last: bool, epoch: float) -> None:
        index, self._index = self._index, self._index + 1

        def due(every: Optional[int]) -> bool:
            return index == 0 or last or (every is not None and index % every == 0)

        every = self.reasoning_every
        reasoning = (last and self.reasoning_at_end) or (
            not last and (index == 0 or (every is not None and index % every == 0))
        )
        with self.weights(model) if self.weights is not None else nullcontext(model) as evaluated:
            record = self.evaluator(
                evaluated,
                step,
                reasoning=reasoning,
                benign=due(self.benign_every),
                kl=due(self.kl_every),
                epoch=epoch,
            )
        self.records.append(record)
        if self.log is not None:
            shown = {
                k: round(v, 4) if isinstance(v, float) else v for k, v in record.items() if not isinstance(v, list)
            }
            self.log(f"[checkpoint] {shown}")

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.at_start and not self.records:
            self._run(model, 0, last=False, epoch=0.0)
        # the start measured elsewhere (at_start=False) or given as records: the next checkpoint is not the first
        self._index = max(self._index, len(self.records), 0 if self.at_start else 1)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step, last = state.global_step, state.global_step >= state.max_steps
        # the trainer's own epochs: an arm that adds rows (replay) has more steps per epoch than the data it was given;
        # with max_steps the trainer counts the epochs it will start (state.num_train_epochs)
        epochs = getattr(state, "num_train_epochs", 0) or args.num_train_epochs
        per_epoch = math.ceil(state.max_steps / epochs)
        if step % (self.eval_steps or per_epoch) == 0 or last:
            epoch = step / per_epoch if self.eval_steps is None else float(state.epoch or step / per_epoch)
            self._run(model, step, last, round(epoch, 3))
