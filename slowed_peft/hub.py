"""Publish a SLowED adapter to the Hugging Face Hub with a model card (and, optionally, a plain-LoRA export).

``push_adapter(model, "org/my-adapter", base_model_id="Qwen/Qwen2.5-0.5B-Instruct")`` saves the adapter, points its
``adapter_config.json`` at the base model's Hub id, writes ``README.md`` (built by :func:`build_model_card`) and
uploads the folder. Loading the adapter back needs ``import slowed_peft`` first (it registers the ``SLOWED`` PEFT
type); with ``export_lora_rank`` a ``lora_export/`` subfolder is added that plain ``peft`` can load on its own.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Optional, Union

from huggingface_hub import HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import validate_repo_id

from .eval.report import format_value
from .tuner.export import LoraExportReport, export_as_lora
from .tuner.persist import hub_id_of
from .tuner.registration import PEFT_TYPE_NAME


__all__ = ["build_model_card", "push_adapter"]

PAPER_URL = "https://arxiv.org/abs/2508.09666"
BASE_TAGS = ("peft", "slowed", "safety", "chain-of-thought", "distillation")
LORA_SUBFOLDER = "lora_export"
DEFAULT_LICENSE = "apache-2.0"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _check_repo_id(repo_id: Any, what: str = "repo_id") -> str:
    if not isinstance(repo_id, str) or not repo_id.strip():
        raise ValueError(f"push_adapter: {what} must be a non-empty Hub id such as 'org/name'; got {repo_id!r}.")
    try:
        validate_repo_id(repo_id)
    except ValueError as e:  # HFValidationError subclasses ValueError; re-raise with context
        raise ValueError(f"push_adapter: {what}={repo_id!r} is not a valid Hub id ('org/name'): {e}") from e
    return repo_id


def _resolve_base_id(config_value: Optional[str], base_model_id: Optional[str]) -> str:
    if base_model_id is not None:
        return _check_repo_id(base_model_id, "base_model_id")
    recorded = hub_id_of(config_value)  # a local copy of a Hub model (e.g. an embedded model of base_models)
    if recorded is not None:
        return _check_repo_id(recorded, "base_model_name_or_path")
    if config_value and _HUB_ID.match(config_value) and not os.path.exists(config_value):
        return _check_repo_id(config_value, "base_model_name_or_path")
    raise ValueError(
        f"push_adapter: the adapter's base_model_name_or_path is {config_value!r}, which is a local path (or not a "
        "Hub id), so nobody could load the adapter from the Hub. Pass base_model_id='org/name', the Hub id of the "
        "base model the adapter was trained on."
    )


def _slowed_config(model: Any) -> tuple[str, Any]:
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise ValueError(
            f"push_adapter: expected a peft.PeftModel with a SLOWED adapter (from get_peft_model(model, "
            f"SLowEDConfig(...)) or PeftModel.from_pretrained); got {type(model).__name__}."
        )
    name = model.active_adapter
    config = model.peft_config.get(name)
    if config is None or getattr(config, "peft_type", None) != PEFT_TYPE_NAME:
        kind = getattr(config, "peft_type", None)
        raise ValueError(f"push_adapter: the active adapter {name!r} is {kind!r}, not a {PEFT_TYPE_NAME} adapter.")
    return name, config


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|#~<>&])")
_HTML_ENTITIES = {"<": "&lt;", ">": "&gt;", "&": "&amp;"}


def _escape(text: Any) -> str:
    """``text`` as inert markdown inside one table cell: whitespace runs (newlines included) become one space, and
    pipes, backslashes, emphasis / link / heading characters are backslash-escaped and ``< > &`` written as HTML
    entities, so a metric name such as ``"a | b\n# Title"`` can neither add a column or a row nor start a heading
    or an HTML tag."""
    flat = " ".join(str(text).split())
    return _MARKDOWN_SPECIAL.sub(lambda m: _HTML_ENTITIES.get(m.group(1), "\\" + m.group(1)), flat)


def _cell(value: Any) -> str:
    """A metric of unknown scale in the card: 4 significant digits; ``None`` stays visible as ``None``; escaped."""
    return _escape(format_value(value, significant=4, missing="None"))


def _metrics_table(metrics: Mapping[str, Any]) -> str:
    """The card's metrics as a markdown table, one row per metric whatever its name or value holds (escaped)."""
    if any(isinstance(v, Mapping) for v in metrics.values()):
        cols: list[str] = []
        for v in metrics.values():
            cols += [k for k in (v if isinstance(v, Mapping) else {"value": v}) if k not in cols]
        rows = [
            [k, *(_cell((v if isinstance(v, Mapping) else {"value": v}).get(c, "")) for c in cols)]
            for k, v in metrics.items()
        ]
    else:
        cols, rows = ["value"], [[k, _cell(v)] for k, v in metrics.items()]
    rows = [[_escape(r[0]), *r[1:]] for r in rows]
    lines = ["| metric | " + " | ".join(_escape(c) for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def build_model_card(
    peft_config: Any,
    base_model_id: str,
    repo_id: str,
    metrics: Optional[Mapping[str, Any]] = None,
    lora_report: Optional[LoraExportReport] = None,
    extra_tags: Iterable[str] = (),
    license: Optional[str] = DEFAULT_LICENSE,
    datasets: Iterable[str] = (),
) -> ModelCard:
    """The README.md of a SLowED adapter repo: metadata, method summary, config, metrics and usage snippets.

    The YAML metadata carries ``license`` (default ``apache-2.0``, the license of this package and of the bases it
    ships recipes for; pass the base model's license if it differs), ``datasets`` (Hub ids of the training data) and
    ``base_model`` (a Hub id). The Python usage snippet runs as written once the two ids resolve (tests run it with
    local paths substituted)."""
    tags = [*BASE_TAGS, f"base_model:adapter:{base_model_id}"]
    tags += [t for t in extra_tags if t not in tags]
    data = ModelCardData(
        library_name="peft",
        base_model=base_model_id,
        pipeline_tag="text-generation",
        tags=tags,
        license=license,
        datasets=list(datasets) or None,
    )
    targets = peft_config.target_modules
    targets = sorted(targets) if isinstance(targets, (set, frozenset, list, tuple)) else targets
    r = peft_config.r
    parts = [
        f"# {repo_id.split('/')[-1]}",
        f"A **SLowED** adapter for [`{base_model_id}`](https://huggingface.co/{base_model_id}), trained with "
        "`slowed-peft`.",
        "## What is SLowED?",
        "SLowED (Slow Tuning + Low-Entropy Masking; [arXiv:2508.09666]("
        f"{PAPER_URL})) distills chain-of-thought reasoning into a small model while keeping its safety behaviour. "
        "Slow Tuning scales the weight update (ΔW = γ·D) and bounds it to a trust region around the base weights "
        "(‖W − W0‖ ≤ ρ‖W0‖); Low-Entropy Masking drops the loss on tokens the student already predicts "
        "confidently. This repo holds the Slow Tuning adapter (ΔW) as a custom PEFT type, `SLOWED`.",
        "## Adapter configuration",
        "| field | value |\n|---|---|\n"
        f"| r | {'dense (full rank)' if r is None else r} |\n"
        f"| slow_factor (γ) | {peft_config.slow_factor} |\n"
        f"| max_drift (ρ) | {peft_config.max_drift} |\n"
        f"| drift_granularity | {peft_config.drift_granularity} |\n"
        f"| target_modules | {', '.join(f'`{t}`' for t in targets) if isinstance(targets, list) else f'`{targets}`'} |",
    ]
    if metrics:
        parts += ["## Evaluation", _metrics_table(metrics)]
    parts += [
        "## Usage",
        "```bash\npip install slowed-peft\n```",
        f"```python\n{usage_snippet(repo_id, base_model_id)}```",
        "> **Warning:** without `import slowed_peft` first, peft does not know this adapter type and raises "
        "`KeyError: 'SLOWED'`.",
    ]
    if lora_report is not None:
        parts += [
            "### Plain PEFT (LoRA export, no `slowed-peft` needed)",
            f"The `{LORA_SUBFOLDER}/` subfolder holds a standard LoRA approximation of the same ΔW (SVD); its max "
            f"relative error ‖ΔW − BA‖/‖ΔW‖ over modules is {lora_report.max_rel_error:.3g} "
            f"(mean {lora_report.mean_rel_error:.3g}).",
            "```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n"
            f'base = AutoModelForCausalLM.from_pretrained("{base_model_id}")\n'
            f'model = PeftModel.from_pretrained(base, "{repo_id}", subfolder="{LORA_SUBFOLDER}")\n```',
        ]
    parts += ["## Citation", f"Method: {PAPER_URL}"]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(parts) + "\n")


def usage_snippet(adapter: str, base_model: str) -> str:
    """Python that loads the adapter and answers one prompt; runs as written (``adapter`` / ``base_model``: Hub ids
    or local folders)."""
    return (
        "import slowed_peft  # registers the SLOWED PEFT type; must come before loading\n"
        "from peft import AutoPeftModelForCausalLM, PeftModel\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'model = AutoPeftModelForCausalLM.from_pretrained("{adapter}")\n'
        f'# or: base = AutoModelForCausalLM.from_pretrained("{base_model}")\n'
        f'#     model = PeftModel.from_pretrained(base, "{adapter}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{base_model}")\n'
        'messages = [{"role": "user", "content": "Natalia sold 48 clips in April and half as many in May. How many in all?"}]\n'
        "inputs = tokenizer.apply_chat_template(\n"
        '    messages, add_generation_prompt=True, return_tensors="pt", return_dict=True\n)\n'
        "output = model.generate(**inputs, max_new_tokens=64)\n"
        'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))\n'
    )


def _set_base_id(folder: Path, base_model_id: str) -> None:
    for path in folder.rglob("adapter_config.json"):
        cfg = json.loads(path.read_text())
        cfg["base_model_name_or_path"] = base_model_id
        path.write_text(json.dumps(cfg, indent=2, sort_keys=True))


def push_adapter(
    model: Any,
    repo_id: str,
    base_model_id: Optional[str] = None,
    *,
    private: bool = False,
    commit_message: str = "Upload SLowED adapter",
    export_lora_rank: Optional[Union[int, float]] = None,
    extra_tags: Iterable[str] = (),
    metrics: Optional[Mapping[str, Any]] = None,
    license: Optional[str] = DEFAULT_LICENSE,
    datasets: Iterable[str] = (),
    token: Optional[str] = None,
    api: Optional[HfApi] = None,
    local_dir: Optional[Union[str, os.PathLike]] = None,
) -> Any:
    """Save ``model``'s SLowED adapter (+ model card, + optional LoRA export) and upload it to ``repo_id``.

    Args:
        base_model_id: Hub id of the base model; required when the adapter's ``base_model_name_or_path`` is local.
        export_lora_rank: also write ``lora_export/`` via :func:`export_as_lora` (int rank or energy fraction).
        metrics: optional ``{name: value}`` or ``{name: {"before": x, "after": y}}`` table for the card (e.g. the
            evaluation report's summary).
        license, datasets: the card's ``license`` and ``datasets`` metadata (see :func:`build_model_card`).
        api: an ``HfApi`` (default ``HfApi(token=token)``). local_dir: staging folder (must be empty; default temp).

    Returns what ``HfApi.upload_folder`` returns (a ``CommitInfo``, whose ``str`` is the commit URL).
    """
    _check_repo_id(repo_id)
    adapter_name, config = _slowed_config(model)
    hub_base = _resolve_base_id(config.base_model_name_or_path, base_model_id)
    if local_dir is not None and Path(local_dir).is_dir() and any(Path(local_dir).iterdir()):
        raise ValueError(f"push_adapter: local_dir={str(local_dir)!r} is not empty; its stale files would be uploaded.")
    api = api or HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="slowed-push-") as tmp:
        folder = Path(local_dir) if local_dir is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(folder))
        report = None
        if export_lora_rank is not None:
            report = export_as_lora(model, folder / LORA_SUBFOLDER, rank=export_lora_rank, adapter_name=adapter_name)
        _set_base_id(folder, hub_base)
        card = build_model_card(
            config,
            hub_base,
            repo_id,
            metrics=metrics,
            lora_report=report,
            extra_tags=extra_tags,
            license=license,
            datasets=datasets,
        )
        card.save(str(folder / "README.md"))
        api.create_repo(repo_id, exist_ok=True, private=private, repo_type="model")
        return api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
