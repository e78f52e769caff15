"""The README.md that ``save_pretrained`` writes into a SLowED adapter folder (instead of PEFT's template card).

PEFT's ``PeftModel.save_pretrained`` calls ``self.create_or_update_model_card(save_directory)``, a ``PeftModel``
method that fills the generic template (39 × "More Information Needed"). :func:`install_card_hook` wraps that method
once per process (the first time a ``SLowEDModel`` is built, never at import): for a model whose adapters include a
``SLOWED`` one it writes :func:`adapter_card` instead; for every other model it calls PEFT's original unchanged.

What goes into the card beyond the config: set ``peft_model.slowed_card_info = {"training": {...}, "metrics": {...}}``
before saving (e.g. the training script's hyper-parameters and the evaluation report); both are optional.
``fit_anchor`` / ``initialize_anchor_weights`` add ``"anchor"`` (the fit's report), shown under "Safety anchor".
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Optional

from .persist import hub_id_of
from .registration import PEFT_TYPE_NAME


CARD_MARKER = "<!-- written by slowed_peft -->"
PEFT_TEMPLATE_MARKER = "More Information Needed"
PAPER_URL = "https://arxiv.org/abs/2508.09666"


def _is_hub_id(name: Optional[str]) -> bool:
    return bool(name) and name.count("/") == 1 and not os.path.exists(name) and not name.startswith((".", "~", "/"))


def _cell(value: Any) -> str:
    text = " ".join(str(value).split())
    for ch in "\\|`*[]#<>":  # `_` inside words is never emphasis in CommonMark
        text = text.replace(ch, "\\" + ch)
    return text


def _table(rows: Mapping[str, Any]) -> str:
    """A two-column markdown table; nested mappings become ``key: value`` lists in one cell."""
    lines = ["| field | value |", "|---|---|"]
    for key, value in rows.items():
        if isinstance(value, Mapping):
            value = ", ".join(f"{k}: {v}" for k, v in value.items())
        lines.append(f"| {_cell(key)} | {_cell(value)} |")
    return "\n".join(lines)


def _anchor_section(config: Any, fit: Optional[Mapping[str, Any]]) -> list[str]:
    """What the safety anchor protects: its settings and, when fitted in this process, the fit's report."""
    rows: dict[str, Any] = {
        "anchor_rank": config.anchor_rank,
        "anchor_energy": config.anchor_energy,
        "anchor_tokens": config.anchor_tokens,
    }
    if fit:
        rows.update(
            {
                "layers": fit.get("layers"),
                "directions per layer (min / mean / max)": f"{fit.get('rank_min')} / {fit.get('rank_mean')} / "
                f"{fit.get('rank_max')}",
                "energy share (min / mean)": f"{fit.get('energy_min')} / {fit.get('energy_mean')}",
                "anchor prompts": fit.get("prompts"),
                "anchor tokens": fit.get("tokens"),
                "fit seconds": fit.get("seconds"),
            }
        )
    text = (
        "Every wrapped layer keeps its delta out of a frozen orthonormal basis `Q` of the input directions that the "
        "anchor prompts use (`ΔW = c·γ·(D − D Q Qᵀ)`), so `ΔW·x = 0` for inputs in span(`Q`): the layer computes as "
        "the base model did there."
    )
    return [text, _table(rows)]


def adapter_card(config: Any, base_model: Optional[str], info: Optional[Mapping[str, Any]] = None) -> str:
    """The card text: YAML metadata, what the adapter is, how it was trained, metrics, storage and usage."""
    info = info or {}
    hub_base = hub_id_of(base_model) or base_model
    yaml = ["library_name: peft", "pipeline_tag: text-generation"]
    if _is_hub_id(hub_base):
        yaml.append(f"base_model: {hub_base}")
    yaml.append("tags:\n- peft\n- slowed\n- safety\n- chain-of-thought")
    dense = config.r is None
    targets = config.target_modules
    if isinstance(targets, (set, frozenset, list, tuple)):  # PEFT stores the resolved module paths: show their kinds
        kinds = sorted({t.rsplit(".", 1)[-1] for t in targets})
        targets = ", ".join(kinds) + (f" ({len(targets)} modules)" if len(kinds) < len(targets) else "")
    base_text = f"[`{hub_base}`](https://huggingface.co/{hub_base})" if _is_hub_id(hub_base) else f"`{hub_base}`"
    precision = getattr(config, "save_precision", "fp32")
    storage = (
        "ΔW stored in at most 4 bits per entry (bit-packed codes, per-row float16 scales, a code book per matrix); "
        "the trust region holds on the reconstructed delta; loading reconstructs it transparently."
        if dense and precision == "4bit"
        else "exact float32 tensors."
    )
    parts = [
        f"---\n{chr(10).join(yaml)}\n---\n{CARD_MARKER}",
        "# SLowED adapter",
        f"A **SLowED** (Slow Tuning) adapter for {base_text}, made with "
        "[`slowed-peft`](https://pypi.org/project/slowed-peft/). Slow Tuning ([arXiv:2508.09666]"
        f"({PAPER_URL})) keeps a fine-tuned model close to its base: every targeted weight is `W = W0 + ΔW` with "
        "`ΔW = γ·D`, bounded to the trust region `‖W − W0‖ ≤ ρ‖W0‖`, so the base model's safety behaviour erodes "
        "less while chain-of-thought reasoning is distilled into it.",
        "## Adapter",
        _table(
            {
                "delta": "dense (full rank)" if dense else f"low rank, r = {config.r}",
                "slow_factor (γ)": config.slow_factor,
                "max_drift (ρ)": config.max_drift,
                "drift_granularity": config.drift_granularity,
                "target_modules": targets,
                "storage": storage,
            }
        ),
        "## Training",
        _table(info["training"])
        if info.get("training")
        else "Not recorded with the adapter (set `peft_model.slowed_card_info['training']` before saving).",
    ]
    if getattr(config, "anchored", False):
        parts += ["## Safety anchor", *_anchor_section(config, info.get("anchor"))]
    if info.get("metrics"):
        parts += ["## Evaluation", _table(info["metrics"])]
    load_base = hub_base if _is_hub_id(hub_base) else "path/to/base-model"
    parts += [
        "## Usage",
        "```bash\npip install slowed-peft\n```",
        "```python\nimport slowed_peft  # registers the SLOWED PEFT type; import it before loading\n"
        "from peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n"
        f'base = AutoModelForCausalLM.from_pretrained("{load_base}")\n'
        'model = PeftModel.from_pretrained(base, "path/to/this/adapter")\n```',
        f"Without `import slowed_peft`, peft raises `KeyError: '{PEFT_TYPE_NAME}'`. "
        "`model.merge_and_unload()` gives a plain transformers model (exact).",
    ]
    return "\n\n".join(parts) + "\n"


def _may_overwrite(path: str) -> bool:
    """Write our card over no card, our own card or PEFT's template; never over a card somebody wrote."""
    if not os.path.exists(path):
        return True
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return False
    return CARD_MARKER in text or PEFT_TEMPLATE_MARKER in text


def install_card_hook() -> None:
    """Wrap ``PeftModel.create_or_update_model_card`` (idempotent): SLowED models get :func:`adapter_card`."""
    from peft import PeftModel

    original = PeftModel.create_or_update_model_card
    if getattr(original, "_slowed_hook", False):
        return

    def create_or_update_model_card(self, output_dir: str) -> None:
        configs = [c for c in self.peft_config.values() if getattr(c, "peft_type", None) == PEFT_TYPE_NAME]
        if not configs:
            return original(self, output_dir)
        config = self.peft_config.get(self.active_adapter, configs[0])
        path = os.path.join(output_dir, "README.md")
        if not _may_overwrite(path):
            return None
        base = config.base_model_name_or_path or getattr(self.get_base_model(), "name_or_path", None)
        with open(path, "w", encoding="utf-8") as f:
            f.write(adapter_card(config, base, getattr(self, "slowed_card_info", None)))
        return None

    create_or_update_model_card._slowed_hook = True
    create_or_update_model_card.__wrapped__ = original
    create_or_update_model_card.__doc__ = original.__doc__
    PeftModel.create_or_update_model_card = create_or_update_model_card
