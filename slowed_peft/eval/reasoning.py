"""Reasoning evaluation: score completions against ``ReasoningExample``s and ``evaluate_reasoning``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

from .answers import (
    bbh_match,
    extract_choice,
    extract_number,
    final_answer_segment,
    normalize_answer,
    numbers_match,
    parse_number,
)
from .generation import generate_batched
from .tasks import DEFAULT_TASKS, ReasoningExample, expand_tasks, load_task


__all__ = ["evaluate_reasoning", "score_example", "score_outputs"]


# ------------------------------------------------------------------------------------------------- scoring


def score_example(output: str, example: ReasoningExample) -> bool:
    """Whether completion ``output`` answers ``example`` correctly."""
    if example.kind == "numeric":
        gold = parse_number(example.answer)
        if gold is None:
            raise ValueError(f"Numeric example has a non-numeric answer {example.answer!r}.")
        return numbers_match(extract_number(output), gold)
    if example.kind == "choice":
        return extract_choice(output, example.labels, example.choices) == example.answer
    if example.kind == "bbh":
        return bbh_match(output, example.answer)
    segment = final_answer_segment(output)
    return normalize_answer(segment if segment is not None else output) == normalize_answer(example.answer)


def score_outputs(examples: Sequence[Any], outputs: Sequence[str]) -> dict[str, Any]:
    """``{"accuracy", "n"}`` for hand-given ``outputs`` aligned with ``examples`` (mappings or examples)."""
    if len(examples) != len(outputs):
        raise ValueError(f"{len(examples)} examples but {len(outputs)} outputs.")
    exs = [ReasoningExample.coerce(e) for e in examples]
    correct = sum(score_example(o, e) for o, e in zip(outputs, exs, strict=True))
    return {"accuracy": correct / len(exs) if exs else 0.0, "n": len(exs)}


def evaluate_reasoning(
    model,
    tokenizer,
    tasks: Optional[Sequence[str]] = None,
    limit: Optional[int] = None,
    data_dir: Union[str, Path, None] = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    examples: Union[None, Sequence[Any], Mapping[str, Sequence[Any]]] = None,
    use_chat_template: bool = True,
    system_prompt: Optional[str] = None,
    outputs: Optional[dict[str, list[str]]] = None,
) -> dict[str, dict[str, Any]]:
    """Greedy-generate on each task and score it: ``{task: {"accuracy": float, "n": int}}``.

    ``tasks``: names from :func:`available_tasks`; ``None`` means ``DEFAULT_TASKS`` (gsm8k, svamp, arc,
    bbh:boolean_expressions) unless ``examples`` are given, then no file task. ``limit``: first N examples per
    task. ``examples``: user-provided examples (mappings with ``prompt``, ``answer``, ``kind`` in ``numeric``,
    ``choice``, ``bbh``, ``exact``), a list (reported as task ``"custom"``) or ``{task_name: list}``; they need
    no files. Pass a dict as ``outputs`` to receive the raw completions per task.
    """
    if tasks is None:
        tasks = DEFAULT_TASKS if examples is None else ()
    names = expand_tasks(list(tasks))
    task_examples: dict[str, list[ReasoningExample]] = {name: load_task(name, data_dir, limit) for name in names}
    if examples is not None:
        extra = examples if isinstance(examples, Mapping) else {"custom": examples}
        for name, items in extra.items():
            task_examples[name] = [ReasoningExample.coerce(e) for e in list(items)[:limit]]
    results: dict[str, dict[str, Any]] = {}
    for name, exs in task_examples.items():
        completions = (
            generate_batched(
                model,
                tokenizer,
                [e.prompt for e in exs],
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                use_chat_template=use_chat_template,
                system_prompt=system_prompt,
            )
            if exs
            else []
        )
        if outputs is not None:
            outputs[name] = completions
        results[name] = score_outputs(exs, completions)
    return results
