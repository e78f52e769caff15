"""The safety anchor's bases: what a fit produced (:class:`AnchorReport`), the state dict that carries it, the checks
on the model before anything is fitted or installed, and :func:`initialize_anchor_weights`, which installs a state
dict as the frozen ``slowed_anchor`` buffers.

Computing the bases (one pass of the initial model over tokenized anchor batches) is
:mod:`slowed_peft.tuner.anchor_fit`; the split follows PEFT's EVA (``get_eva_state_dict`` /
``initialize_lora_eva_weights``). The anchor state dict is a plain ``dict[str, torch.Tensor]`` that
``safetensors.torch.save_file`` writes as it is:

- ``"<module>"`` (the module's name without ``base_model.model.``, e.g. ``model.layers.0.self_attn.q_proj``): the
  layer's orthonormal basis, float32 ``in_features × k``;
- ``"<module>:energy"``: the share of the layer's anchor-input energy that basis holds (0-d float64);
- ``"anchor:sequences"`` / ``"anchor:tokens"``: how many sequences and tokens counted (0-d int64);
- ``"anchor:rank"`` / ``"anchor:energy"`` / ``"anchor:with_responses"``: the adapter settings it was fitted with
  (``anchor_rank``, ``anchor_energy``, ``anchor_tokens == "prompt+response"``; -1 for ``None``), which a cache file
  must match.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from .registration import short_name


META = "anchor:"
ENERGY_SUFFIX = ":energy"
SEQUENCES, TOKENS = f"{META}sequences", f"{META}tokens"
SETTINGS = {"anchor_rank": f"{META}rank", "anchor_energy": f"{META}energy", "anchor_tokens": f"{META}with_responses"}


@dataclass
class AnchorReport:
    """What :func:`fit_anchor` / :func:`initialize_anchor_weights` installed.

    Attributes:
        adapter_name: The anchored adapter.
        prompts: Anchor sequences that counted (at least one unmasked token).
        tokens: Anchor tokens that counted (``attention_mask`` 1).
        ranks: Per layer (module name without ``base_model.model.``) the number of protected directions.
        energy: Per layer the share of its anchor inputs' second-moment energy that those directions hold.
        seconds: Wall time of the call.
    """

    adapter_name: str
    prompts: int
    tokens: int
    ranks: dict[str, int] = field(default_factory=dict)
    energy: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def mean_rank(self) -> float:
        return sum(self.ranks.values()) / max(1, len(self.ranks))

    @property
    def min_energy(self) -> float:
        return min(self.energy.values()) if self.energy else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values, plus the summary figures (``layers``, ``rank_min`` / ``rank_mean`` /
        ``rank_max``, ``energy_min`` / ``energy_mean``)."""
        ranks, energy = list(self.ranks.values()), list(self.energy.values())
        summary = {
            "layers": len(ranks),
            "rank_min": min(ranks, default=0),
            "rank_mean": round(self.mean_rank, 2),
            "rank_max": max(ranks, default=0),
            "energy_min": round(min(energy), 4) if energy else None,
            "energy_mean": round(sum(energy) / len(energy), 4) if energy else None,
        }
        return {**asdict(self), **summary}

    def __str__(self) -> str:
        return self.summary()

    def summary(self) -> str:
        """One line: directions per layer (min / mean / max), energy share (min / mean), prompts, tokens, seconds."""
        d = self.to_dict()
        energy = f"energy share min {d['energy_min']:.3f} mean {d['energy_mean']:.3f}" if self.energy else "energy n/a"
        return (
            f"anchor {self.adapter_name!r}: {d['layers']} layers, {d['rank_min']}/{d['rank_mean']:g}/{d['rank_max']} "
            f"directions (min/mean/max), {energy}, {self.prompts} prompts, {self.tokens} tokens, {self.seconds:.2f} s"
        )


def check_peft_model(model: Any, caller: str) -> None:
    """``TypeError`` unless ``model`` is a ``peft.PeftModel`` (``get_peft_model``'s result, or ``trainer.model``
    before ``trainer.train()``)."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise TypeError(
            f"{caller}: expected a peft.PeftModel (from get_peft_model(model, SLowEDConfig(...)), or trainer.model "
            f"before trainer.train()); got {type(model).__module__}.{type(model).__name__}."
        )


def resolve_adapter(peft_model: Any, adapter_name: Optional[str], caller: str) -> tuple[str, Any]:
    """``(name, config)`` of an anchored adapter (default: the active one); ``ValueError`` for a name the model does
    not have (listing those it has) or an adapter without an anchor."""
    if adapter_name is None:
        active = getattr(peft_model, "active_adapter", "default")
        adapter_name = active[0] if isinstance(active, (list, tuple)) else active
    configs = getattr(peft_model, "peft_config", {})
    if adapter_name not in configs:
        raise ValueError(f"{caller}: no adapter named {adapter_name!r} (adapters: {sorted(configs)}).")
    config = configs[adapter_name]
    if not getattr(config, "anchored", False):
        raise ValueError(
            f"{caller}: adapter {adapter_name!r} has no safety anchor; create it with SLowEDConfig(anchor_rank=...) "
            "and/or anchor_energy=..."
        )
    return adapter_name, config


def anchored_layers(peft_model: nn.Module, adapter_name: str, caller: str = "fit_anchor") -> dict[str, nn.Module]:
    """The SLowED layers that carry ``adapter_name``'s anchor, by full module name (``ValueError`` if none)."""
    from .layer import SLowEDLayer

    layers = {
        name: module
        for name, module in peft_model.named_modules()
        if isinstance(module, SLowEDLayer) and adapter_name in module.slowed_anchor
    }
    if not layers:
        raise ValueError(f"{caller}: the model has no SLowED layer with adapter {adapter_name!r}.")
    return layers


def check_not_sharded(peft_model: nn.Module, caller: str) -> None:
    """Refuse models already sharded by FSDP (``fully_shard`` / FSDP1): the fit stops the forward pass after the
    last wrapped layer, which FSDP's hooks do not survive (the last block stays unsharded, its deltas stop training)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch build without distributed support cannot shard
        FSDPModule = ()  # noqa: N806
    sharded = any(type(p).__name__ == "DTensor" for p in peft_model.parameters()) or any(
        isinstance(m, FSDPModule) or type(m).__name__ == "FullyShardedDataParallel" for m in peft_model.modules()
    )
    if sharded:
        raise ValueError(
            f"{caller}: the model is already sharded with FSDP. Fit the anchor before `fully_shard` / "
            "`accelerator.prepare` / `trainer.train()`: every rank then fits the same bases from the same anchor "
            "batches (or loads them with initialize_anchor_weights from one saved state dict), and sharding keeps them."
        )


def _delta_is_zero(layer: nn.Module, adapter_name: str) -> bool:
    from .layer import full_tensor

    if adapter_name in layer.slowed_delta:
        return not bool(full_tensor(layer.slowed_delta[adapter_name]).detach().any())
    if adapter_name in layer.slowed_B:
        return not bool(full_tensor(layer.slowed_B[adapter_name]).detach().any())
    return True


def check_refit(layers: Mapping[str, nn.Module], adapter_name: str, overwrite: bool, caller: str) -> None:
    """Refuse to replace fitted bases under a non-zero delta unless ``overwrite``: it would change a trained model's
    outputs, also on the earlier anchor prompts, without a word."""
    if overwrite:
        return
    changed = [
        short_name(name)
        for name, layer in layers.items()
        if layer.slowed_anchor[adapter_name].shape[-1] > 0 and not _delta_is_zero(layer, adapter_name)
    ]
    if changed:
        raise ValueError(
            f"{caller}: adapter {adapter_name!r} already has a fitted anchor and a non-zero delta (trained?) on "
            f"{len(changed)} layer(s), e.g. {changed[0]!r}. Re-fitting would change the trained model's outputs, "
            "also on the earlier anchor prompts. Pass overwrite=True to re-fit anyway, or fit before training."
        )


def whole_width_error(full: list[tuple[str, int]], config: Any, caller: str) -> ValueError:
    """The error for bases that would protect a layer's whole input width (``full``: ``(name, width)``)."""
    listed = ", ".join(f"{short_name(n)} ({w} of {w})" for n, w in full[:4]) + (", ..." if len(full) > 4 else "")
    return ValueError(
        f"{caller}: the anchor would protect the whole input width of {len(full)} layer(s): {listed}. Those layers "
        f"could never learn (anchor_rank={config.anchor_rank}, anchor_energy={config.anchor_energy}). Set "
        "anchor_rank below the widths, or a lower anchor_energy."
    )


def _scalar(state: Mapping[str, torch.Tensor], key: str, default: float = 0.0) -> float:
    value = state.get(key)
    return float(value) if isinstance(value, torch.Tensor) and value.numel() == 1 else default


def check_state_dict(
    state: Any, layers: Mapping[str, nn.Module], config: Any, caller: str, where: str = "the anchor state dict"
) -> dict[str, torch.Tensor]:
    """The bases of ``state`` by full module name, checked against the layers (names, widths, rank cap, whole width);
    ``TypeError`` / ``ValueError`` naming the key and ``where``."""
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TypeError(f"{caller}: {where} must be a dict of str -> torch.Tensor (from get_anchor_state_dict).")
    names = {short_name(n): n for n in layers}
    bases = {k: v for k, v in state.items() if ":" not in k}
    missing = [k for k in names if k not in bases]
    extra = [k for k in bases if k not in names]
    if missing or extra:
        what = f"has no basis for layer {missing[0]!r}" if missing else f"has a basis for {extra[0]!r}, not a layer"
        raise ValueError(
            f"{caller}: {where} {what} of this adapter ({len(missing)} missing, {len(extra)} unknown; fitted on "
            "another model or with other target_modules?)."
        )
    full = []
    for key, basis in bases.items():
        layer = layers[names[key]]
        if basis.dim() != 2 or basis.shape[0] != layer.in_features:
            raise ValueError(
                f"{caller}: {where}: the basis {key!r} must be {layer.in_features} × k; got shape "
                f"{tuple(basis.shape)} (fitted on another base model?)."
            )
        if config.anchor_rank is not None and basis.shape[1] > config.anchor_rank:
            raise ValueError(
                f"{caller}: {where}: the basis {key!r} has {basis.shape[1]} directions, more than this adapter's "
                f"anchor_rank={config.anchor_rank}."
            )
        if basis.shape[1] >= layer.in_features:
            full.append((names[key], layer.in_features))
    if full:
        raise whole_width_error(full, config, caller)
    return {names[k]: v for k, v in bases.items()}


def record_report(peft_model: nn.Module, report: AnchorReport) -> None:
    """Keep the report on the model (``slowed_card_info["anchor"]``), so ``save_pretrained`` writes it into the
    adapter card (:mod:`slowed_peft.tuner.card`)."""
    info = getattr(peft_model, "slowed_card_info", None)
    info = dict(info) if isinstance(info, Mapping) else {}
    info["anchor"] = report.to_dict()
    peft_model.slowed_card_info = info


@torch.no_grad()
def initialize_anchor_weights(
    peft_model: nn.Module,
    anchor_state_dict: Mapping[str, torch.Tensor],
    adapter_name: Optional[str] = None,
    overwrite: bool = False,
) -> AnchorReport:
    """Install anchor bases (from :func:`~slowed_peft.get_anchor_state_dict`, or loaded from its safetensors file) as
    the adapter's frozen ``slowed_anchor`` buffers, as PEFT's ``initialize_lora_eva_weights`` installs EVA's state
    dict.

    Layers whose bases are equal (q/k/v, gate/up: fitted on one input) share one buffer.

    Args:
        peft_model: A ``peft.PeftModel`` with an anchored SLowED adapter, not yet sharded.
        anchor_state_dict: ``dict[str, torch.Tensor]`` as described in :mod:`slowed_peft.tuner.anchor`.
        adapter_name: The anchored adapter (default: the active one).
        overwrite: Replace fitted bases under a delta that is no longer zero (a trained adapter), which changes
            the model's outputs; refused otherwise.

    Returns:
        An :class:`AnchorReport` of what was installed.

    Raises:
        TypeError: ``peft_model`` is not a ``PeftModel`` or the state dict is not a dict of tensors.
        ValueError: Unknown or unanchored adapter, a sharded model, a re-fit of a trained adapter without
            ``overwrite``, or a state dict that does not fit the layers (names, widths, rank, whole width,
            orthonormality).
    """
    started = time.time()
    caller = "initialize_anchor_weights"
    check_peft_model(peft_model, caller)
    adapter_name, config = resolve_adapter(peft_model, adapter_name, caller)
    check_not_sharded(peft_model, caller)
    layers = anchored_layers(peft_model, adapter_name, caller)
    bases = check_state_dict(anchor_state_dict, layers, config, caller)
    check_refit(layers, adapter_name, overwrite, caller)
    report = AnchorReport(
        adapter_name=adapter_name,
        prompts=int(_scalar(anchor_state_dict, SEQUENCES)),
        tokens=int(_scalar(anchor_state_dict, TOKENS)),
    )
    installed: dict[tuple, list[torch.Tensor]] = {}
    for name, layer in layers.items():
        basis = bases[name].detach()
        bucket = installed.setdefault((tuple(basis.shape), basis.dtype), [])
        same = next((b for b in bucket if b is basis or torch.equal(b, basis)), None)
        if same is None:
            bucket.append(basis)
        install_anchor(layer, adapter_name, basis if same is None else same)
        short = short_name(name)
        report.ranks[short] = basis.shape[1]
        energy = anchor_state_dict.get(short + ENERGY_SUFFIX)
        if isinstance(energy, torch.Tensor) and energy.numel() == 1:
            report.energy[short] = float(energy)
    report.seconds = round(time.time() - started, 2)
    record_report(peft_model, report)
    return report


@torch.no_grad()
def install_anchor(layer: nn.Module, adapter_name: str, basis: torch.Tensor) -> None:
    """Set one layer's protected basis (``in_features × k``, orthonormal columns), checked and kept in float32."""
    if basis.dim() != 2 or basis.shape[0] != layer.in_features:
        raise ValueError(
            f"An anchor basis for this layer must be {layer.in_features} × k; got shape {tuple(basis.shape)} "
            "(fitted on another base model?)."
        )
    if basis.shape[1] >= layer.in_features:
        raise ValueError(
            f"An anchor basis of {basis.shape[1]} directions protects the layer's whole input width "
            f"{layer.in_features}: the layer could never learn. Use fewer directions."
        )
    check_orthonormal(basis, "the anchor basis")
    device = layer.get_base_layer().weight.device
    layer.slowed_anchor[adapter_name] = basis.detach().float().to(device if device.type != "meta" else "cpu")
    layer._weight_cache = None


def check_orthonormal(basis: torch.Tensor, what: str, tol: float = 1e-3) -> None:
    """``ValueError`` unless ``basis`` is finite with orthonormal columns (``‖QᵀQ − I‖_max ≤ tol``)."""
    if basis.shape[-1] == 0:
        return
    q = basis.detach().double()
    if not bool(torch.isfinite(q).all()):
        raise ValueError(f"{what} is not finite (NaN or inf entries).")
    err = float((q.T @ q - torch.eye(q.shape[1], dtype=q.dtype, device=q.device)).abs().max())
    if not math.isfinite(err) or err > tol:
        raise ValueError(f"{what} does not have orthonormal columns (max |QᵀQ − I| = {err:.3g} > {tol}).")
