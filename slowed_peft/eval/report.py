"""``EvalReport``: JSON + one-screen text table of safety and reasoning results, and before/after comparison."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union


__all__ = ["EvalReport", "compare_table", "format_value"]

SAFETY_KEYS = ("refusal_ratio", "harmful_kl", "n")
REASONING_KEYS = ("accuracy", "n")


def format_value(
    value: Any, digits: int = 3, *, missing: str = "-", tiny: bool = True, significant: Optional[int] = None
) -> str:
    """One table cell: the one number formatter of the package's text / markdown tables.

    ``None`` and NaN -> ``missing`` (a measure a checkpoint did not take is not a number to print); floats -> ``digits`` decimals, or in scientific notation when ``tiny`` and
    ``0 < |value| < 1e-3`` (a KL of ``3e-05`` must not print as ``0.000``), or with ``significant`` significant
    digits when that is given (``.4g``-style, for metrics of unknown scale); anything else (ints, bools, text) ->
    ``str(value)``.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    if not isinstance(value, float):
        return str(value)
    if significant is not None:
        return f"{value:.{significant}g}"
    if tiny and value != 0 and abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


@dataclass
class EvalReport:
    """Evaluation results of one model (+ optional adapter).

    ``safety``: ``{SET: {"refusal_ratio", "harmful_kl", "n"}}`` (from ``evaluate_safety``); ``reasoning``:
    ``{TASK: {"accuracy", "n"}}`` (from ``evaluate_reasoning``). Extra keys in the inputs are dropped.
    """

    model: str
    adapter: Optional[str] = None
    safety: dict[str, dict[str, Any]] = field(default_factory=dict)
    reasoning: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.safety = {k: {m: v.get(m) for m in SAFETY_KEYS} for k, v in (self.safety or {}).items()}
        self.reasoning = {k: {m: v.get(m) for m in REASONING_KEYS} for k, v in (self.reasoning or {}).items()}

    def to_dict(self) -> dict[str, Any]:
        """``{"model", "adapter", "safety", "reasoning"}``, JSON-serialisable."""
        return {
            "model": self.model,
            "adapter": self.adapter,
            "safety": {k: dict(v) for k, v in self.safety.items()},
            "reasoning": {k: dict(v) for k, v in self.reasoning.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalReport:
        """Inverse of :meth:`to_dict`."""
        return cls(
            data["model"], data.get("adapter"), dict(data.get("safety") or {}), dict(data.get("reasoning") or {})
        )

    def to_json(self, indent: int = 2) -> str:
        """The report as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: Union[str, Path]) -> Path:
        """Write the JSON (creating parent folders); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: Union[str, Path]) -> EvalReport:
        """Read a report written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def table(self) -> str:
        """One-screen plain-text summary."""
        title = f"model: {self.model}" + (f"   adapter: {self.adapter}" if self.adapter else "")
        parts = [title]
        if self.safety:
            rows = [
                [k, format_value(v["refusal_ratio"]), format_value(v["harmful_kl"], 4), format_value(v["n"])]
                for k, v in self.safety.items()
            ]
            parts += ["", _table(["safety set", "refusal", "harm_kl", "n"], rows)]
        if self.reasoning:
            rows = [[k, format_value(v["accuracy"]), format_value(v["n"])] for k, v in self.reasoning.items()]
            parts += ["", _table(["reasoning task", "accuracy", "n"], rows)]
        return "\n".join(parts)

    def __str__(self) -> str:
        return self.table()


def _as_report(obj: Union[EvalReport, Mapping[str, Any]]) -> EvalReport:
    return obj if isinstance(obj, EvalReport) else EvalReport.from_dict(obj)


def _delta(a: Any, b: Any) -> str:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return f"{b - a:+.4f}" if abs(b - a) < 1e-3 and b != a else f"{b - a:+.3f}"
    return "-"


def _name(report: EvalReport) -> str:
    return f"{report.model} + {report.adapter}" if report.adapter else report.model


def compare_table(before: Union[EvalReport, Mapping[str, Any]], after: Union[EvalReport, Mapping[str, Any]]) -> str:
    """Before/after table (one row per metric present in either report) with the change ``after - before``."""
    b, a = _as_report(before), _as_report(after)
    rows: list[list[str]] = []
    for section, metrics in (("safety", ("refusal_ratio", "harmful_kl")), ("reasoning", ("accuracy",))):
        names = list(dict.fromkeys(list(getattr(b, section)) + list(getattr(a, section))))
        for name in names:
            for metric in metrics:
                vb = getattr(b, section).get(name, {}).get(metric)
                va = getattr(a, section).get(name, {}).get(metric)
                rows.append([f"{name}/{metric}", format_value(vb, 4), format_value(va, 4), _delta(vb, va)])
    title = f"before: {_name(b)}   after: {_name(a)}"
    return title + "\n\n" + _table(["metric", "before", "after", "delta"], rows)


def plural(count: float, noun: str, plural_form: Optional[str] = None) -> str:
    """``"1 seed"``, ``"3 seeds"``, ``"1.5 epochs"``: a count with its noun in the right number."""
    text = f"{count:g}" if isinstance(count, float) else str(count)
    return f"{text} {noun if count == 1 else (plural_form or noun + 's')}"
