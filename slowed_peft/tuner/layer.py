"""SLowED tuner layers: wrap ``nn.Linear`` / transformers ``Conv1D`` with a scaled, trust-region-bounded delta."""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple, Optional

import torch
import torch.nn.functional as F
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from transformers.pytorch_utils import Conv1D

from .functional import (
    Clipped,
    DenseDeltaLinear,
    LowRankTrustRegionScale,
    Scale,
    dense_scale,
    project_out,
    sq_norm,
    trust_region_scale,
)
from .merge import merge_within_bound, report_merge_loss


SUPPORTED_LAYER_TYPES = (nn.Linear, Conv1D)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a sharded DTensor (FSDP2 outside forward); other tensors as they are."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


class _OptimizerSteps:
    """Counts ``optimizer.step()`` calls once a SLowED layer caches an effective weight.

    The cache is keyed on this count as well as on tensor version counters, because fused optimizers
    (``AdamW(fused=True)``, transformers' default ``adamw_torch_fused``) update parameters without bumping them. The
    process-wide post-step hook is registered when the first layer builds a cache, not at import. It counts every
    optimizer's steps: scoping by parameter identity misses optimizers that step flattened copies of the deltas
    (DeepSpeed ZeRO-2), and a foreign step costs only one cache rebuild (tens of µs per matrix).
    """

    count = 0
    _hook_handle = None

    @classmethod
    def track(cls) -> None:
        """Start counting (idempotent)."""
        if cls._hook_handle is None:
            cls._hook_handle = register_optimizer_step_post_hook(cls._after_step)

    @classmethod
    def _after_step(cls, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        cls.count += 1


class _EffectiveWeight(NamedTuple):
    """The fused path's cache: ``weight = W0 + Σ c_a·D_a`` with each delta's scale and trust-region state."""

    key: tuple  # optimizer steps, adapters, identities and versions of W0 and the deltas, their settings
    weight: torch.Tensor
    scales: list[Scale]
    clipped: list[Optional[Clipped]]


class SLowEDLayer(BaseTunerLayer):
    """Per-layer SLowED state, keyed by adapter name (PEFT's convention).

    Trainable: ``slowed_delta`` (dense ``D``, base-weight layout) or ``slowed_A`` (r×in) / ``slowed_B`` (out×r).
    Saved but frozen: ``slowed_w0_norm`` (‖W0‖ per matrix or per row, float32), so a reloaded adapter enforces the
    same bound, and with a safety anchor ``slowed_anchor`` (in_features × k orthonormal columns, float32; k = 0 until
    :func:`~slowed_peft.fit_anchor` installs it). Plain settings: ``r``, ``slow_factor``, ``max_drift``,
    ``drift_granularity``, ``anchor_rank`` (the configured size, None: no anchor).
    """

    adapter_layer_names = ("slowed_delta", "slowed_A", "slowed_B")
    other_param_names = (
        "r",
        "slow_factor",
        "max_drift",
        "drift_granularity",
        "anchor_rank",
        "slowed_w0_norm",
        "slowed_anchor",
    )

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.r: dict[str, Optional[int]] = {}
        self.slow_factor: dict[str, float] = {}
        self.max_drift: dict[str, Optional[float]] = {}
        self.drift_granularity: dict[str, str] = {}
        self.anchor_rank: dict[str, Optional[int]] = {}
        self.slowed_delta = nn.ParameterDict({})
        self.slowed_A = nn.ParameterDict({})
        self.slowed_B = nn.ParameterDict({})
        self.slowed_w0_norm = BufferDict({}, persistent=True)
        self.slowed_anchor = BufferDict({}, persistent=True)
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self._weight_cache: Optional[_EffectiveWeight] = None
        self.kwargs = kwargs

        base = self.get_base_layer()
        if hasattr(getattr(base, "weight", None), "ds_id"):
            raise ValueError(
                "SLowED cannot wrap weights partitioned by DeepSpeed ZeRO-3 (it needs W0 whole to set the trust region "
                "and to build W0 + ΔW). Use ZeRO-2, DDP or FSDP2 instead."
            )
        if isinstance(base, nn.Linear):
            self.in_features, self.out_features = base.in_features, base.out_features
            self.is_conv1d = False
        elif isinstance(base, Conv1D):
            self.in_features, self.out_features = base.weight.shape
            self.is_conv1d = True
        else:
            raise unsupported_layer_error(base)

    # ----------------------------------------------------------------------------------------------------- set-up
    def update_layer(self, adapter_name: str, config, r: Optional[int] = None, **kwargs: Any) -> None:
        """Create (or re-create) the adapter ``adapter_name`` from ``config`` on this layer."""
        r = config.r if r is None else r
        self.r[adapter_name] = r
        self.slow_factor[adapter_name] = float(config.slow_factor)
        self.max_drift[adapter_name] = None if config.max_drift is None else float(config.max_drift)
        self.drift_granularity[adapter_name] = config.drift_granularity
        base_w = self.get_base_layer().weight
        factory = {"device": base_w.device if base_w.device.type != "meta" else "cpu", "dtype": torch.float32}
        if r is None:
            self.slowed_delta[adapter_name] = nn.Parameter(torch.zeros(base_w.shape, **factory))
        else:
            self.slowed_A[adapter_name] = nn.Parameter(torch.zeros(r, self.in_features, **factory))
            self.slowed_B[adapter_name] = nn.Parameter(torch.zeros(self.out_features, r, **factory))
        self.slowed_w0_norm[adapter_name] = self._initial_norm(adapter_name)
        if getattr(config, "anchored", False):
            self.anchor_rank[adapter_name] = config.anchor_rank
            self.slowed_anchor[adapter_name] = torch.zeros(self.in_features, 0, device=factory["device"])
        else:
            self.anchor_rank.pop(adapter_name, None)
            if adapter_name in self.slowed_anchor:
                del self.slowed_anchor[adapter_name]
        self.reset_slowed_parameters(adapter_name, config.init_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self._weight_cache = None
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def _initial_norm(self, adapter_name: str) -> torch.Tensor:
        """‖W0‖ (Frobenius, or per output row in a broadcastable shape) in float32."""
        w = self.get_base_layer().weight
        row_dim = self._row_dim(adapter_name)
        if w.device.type == "meta":  # loading with low_cpu_mem_usage: the saved buffer replaces this
            shape = () if row_dim is None else (self.out_features, 1) if row_dim == 1 else (1, self.out_features)
            return torch.ones(shape)
        with torch.no_grad():
            return sq_norm(w.detach(), row_dim).sqrt().float()

    @torch.no_grad()
    def reset_slowed_parameters(self, adapter_name: str, init_weights: bool = True) -> None:
        """``init_weights=True``: ΔW = 0 (LoRA-style kaiming A, zero B). False: a random non-zero delta."""
        if adapter_name in self.slowed_delta:
            delta = self.slowed_delta[adapter_name]
            if init_weights:
                delta.zero_()
            else:
                w = self.get_base_layer().weight
                std = float(w.float().std()) if w.device.type != "meta" else 0.02
                delta.normal_(0.0, std / self.slow_factor[adapter_name])
        elif adapter_name in self.slowed_A:
            nn.init.kaiming_uniform_(self.slowed_A[adapter_name], a=math.sqrt(5))
            if init_weights:
                nn.init.zeros_(self.slowed_B[adapter_name])
            else:
                nn.init.normal_(self.slowed_B[adapter_name], std=0.02 / self.slow_factor[adapter_name])
        self._weight_cache = None

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: Optional[torch.device] = None) -> None:
        """PEFT's move, except that ‖W0‖ and the anchor stay float32 (a bf16 norm would loosen the bound by up to
        0.4%; a bf16 basis would no longer be orthonormal, so protected inputs would leak through)."""
        kept = {}
        for buffers in (self.slowed_w0_norm, self.slowed_anchor):
            if adapter_name in buffers:
                kept[id(buffers)] = (buffers, buffers._buffers.pop(adapter_name))
        super()._move_adapter_to_device_of_base_layer(adapter_name, device=device)
        target = device if device is not None else self.get_base_layer().weight.device
        for buffers, tensor in kept.values():
            buffers[adapter_name] = tensor.to(target if target.type != "meta" else tensor.device)

    # -------------------------------------------------------------------------------------------------- helpers
    def _row_dim(self, adapter_name: str) -> Optional[int]:
        """Axis reduced for a per-row norm in the base weight's layout (None: whole matrix)."""
        if self.drift_granularity[adapter_name] != "row":
            return None
        return 0 if self.is_conv1d else 1

    def _w0_norm(self, adapter_name: str, device: torch.device) -> torch.Tensor:
        return self.slowed_w0_norm[adapter_name].to(device)

    def _anchor(self, adapter_name: str) -> Optional[torch.Tensor]:
        """The adapter's protected input basis (in_features × k), or None without an anchor (or before fitting)."""
        if adapter_name not in self.slowed_anchor:
            return None
        q = self.slowed_anchor[adapter_name]
        return q if q.shape[-1] > 0 else None

    def _check_anchor_fitted(self, names: list[str]) -> None:
        """Refuse to train an anchored adapter whose bases were never fitted (it would protect nothing)."""
        for name in names:
            if name in self.slowed_anchor and self.slowed_anchor[name].shape[-1] == 0:
                raise ValueError(
                    f"SLowED adapter {name!r} has a safety anchor (anchor_rank={self.anchor_rank.get(name)!r}) but no "
                    "fitted bases, so it would protect nothing. Before training call "
                    "`slowed_peft.fit_anchor(peft_model, slowed_peft.anchor_dataloader(tokenizer, prompts))` "
                    "(with a trainer: on `trainer.model`, before `trainer.train()`)."
                )

    def _low_rank_factors(self, adapter_name: str, gather: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, c·B)``: the trust-region scale folded into ``B`` (cheaper than scaling activations).

        ``gather`` assembles sharded (FSDP2 DTensor) factors first, for use outside the forward pass."""
        a, b = self.slowed_A[adapter_name], self.slowed_B[adapter_name]
        if gather:
            a, b = full_tensor(a), full_tensor(b)
        a = project_out(a, self._anchor(adapter_name))  # B (A − A Q Qᵀ): A's rows live in input space
        gamma, rho = self.slow_factor[adapter_name], self.max_drift[adapter_name]
        if rho is None:
            return a, b * gamma
        per_row = self.drift_granularity[adapter_name] == "row"
        w0n = self._w0_norm(adapter_name, b.device)
        if per_row:
            w0n = w0n.reshape(-1, 1)
        return a, LowRankTrustRegionScale.apply(b, a, w0n, gamma, rho, per_row)

    def _dense_delta(self, adapter_name: str, gather: bool = False) -> torch.Tensor:
        """Differentiable ``c(D)·D`` in the base weight's layout (``gather``: assemble a sharded ``D`` first)."""
        d = full_tensor(self.slowed_delta[adapter_name]) if gather else self.slowed_delta[adapter_name]
        d = project_out(d, self._anchor(adapter_name), self.is_conv1d)
        gamma, rho = self.slow_factor[adapter_name], self.max_drift[adapter_name]
        if rho is None:
            return d * gamma
        row_dim = self._row_dim(adapter_name)
        c = trust_region_scale(sq_norm(d, row_dim), self._w0_norm(adapter_name, d.device), gamma, rho)
        return d * c.to(d.dtype)

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """``ΔW = W − W0`` of one adapter, trust region applied, in the base weight's layout and float32.

        Sharded (FSDP2) adapter weights are gathered first, so the norms of the trust region are global."""
        if adapter_name in self.slowed_delta:
            return self._dense_delta(adapter_name, gather=True)
        if adapter_name in self.slowed_A:
            a, b = self._low_rank_factors(adapter_name, gather=True)
            delta = b @ a
            return delta.T if self.is_conv1d else delta
        raise ValueError(f"Adapter {adapter_name!r} not found on this layer; it has {self._adapter_names()}.")

    def _adapter_names(self) -> list[str]:
        return [*self.slowed_delta.keys(), *self.slowed_A.keys()]


def unsupported_layer_error(layer: nn.Module) -> ValueError:
    names = ", ".join(f"{t.__module__}.{t.__name__}" for t in SUPPORTED_LAYER_TYPES)
    return ValueError(
        f"SLowED cannot wrap a layer of type {type(layer).__module__}.{type(layer).__name__}; supported layer "
        f"types: {names}. Adjust `target_modules` (e.g. 'all-linear') or add it to `exclude_modules`."
    )


class Linear(nn.Module, SLowEDLayer):
    """SLowED around an ``nn.Linear`` or a transformers ``Conv1D`` (GPT-2 style, transposed weight)."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config, **kwargs: Any) -> None:
        super().__init__()
        SLowEDLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, **kwargs)

    # ------------------------------------------------------------------------------------------------ merging
    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        """Add the active adapters' ΔW into the base weight; the merged weight obeys the trust region after rounding.

        See :func:`merge_within_bound`: rounding to the base dtype never takes ``W`` outside ``ρ‖W0‖`` of the weight it
        merges into, and a merge that loses more than 10% of ΔW to that dtype warns (merge in float32 instead)."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        if not adapter_names:
            return
        base = self.get_base_layer()
        for name in adapter_names:
            if name not in self._adapter_names():
                continue
            with torch.no_grad():
                delta = self.get_delta_weight(name).to(device=base.weight.device)
                merged, lost = merge_within_bound(base.weight.data, delta, self.max_drift[name], self._row_dim(name))
                if safe_merge and not torch.isfinite(merged).all():
                    raise ValueError(f"NaNs detected in the merged weights; adapter {name!r} seems to be broken.")
                base.weight.data.copy_(merged)
            report_merge_loss(lost, base.weight.dtype)
            self.merged_adapters.append(name)
        self._weight_cache = None

    def unmerge(self) -> None:
        """Subtract the merged adapters' ΔW again, restoring W0 (up to floating-point rounding)."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        base = self.get_base_layer()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name in self._adapter_names():
                with torch.no_grad():
                    base.weight.data.sub_(self.get_delta_weight(name).to(base.weight.dtype))
        self._weight_cache = None

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        return True

    # ------------------------------------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        active = [a for a in self.active_adapters if a in self._adapter_names()]
        if not active:
            return self.base_layer(x, *args, **kwargs)

        dense = [a for a in active if a in self.slowed_delta]
        low_rank = [a for a in active if a in self.slowed_A]
        if self.slowed_anchor and self.training and torch.is_grad_enabled():
            self._check_anchor_fitted(active)
        base = self.get_base_layer()
        if dense and self._can_fuse(x, dense):
            result = self._fused_dense_forward(x, dense)
        else:
            result = self.base_layer(x, *args, **kwargs)
            for name in dense:
                d = self._dense_delta(name)
                xd = x.to(d.dtype)
                extra = xd @ d if self.is_conv1d else F.linear(xd, d)
                result = result + extra.to(result.dtype)
        for name in low_rank:
            a, b = self._low_rank_factors(name)
            xa = x.to(a.dtype)
            result = result + F.linear(F.linear(xa, a), b).to(result.dtype)
        return result.to(x.dtype) if base.weight.dtype == x.dtype else result

    def _can_fuse(self, x: torch.Tensor, dense: list[str]) -> bool:
        """The fused path needs one dtype for input, base weight and deltas, and no autocast."""
        w = self.get_base_layer().weight
        if torch.is_autocast_enabled(x.device.type) or x.dtype != w.dtype:
            return False
        return all(self.slowed_delta[a].dtype == w.dtype for a in dense)

    def _fused_dense_forward(self, x: torch.Tensor, dense: list[str]) -> torch.Tensor:
        base = self.get_base_layer()
        cache = self._effective_weight(dense)
        deltas = [self.slowed_delta[a] for a in dense]
        anchors = tuple(self._anchor(a) for a in dense)
        return DenseDeltaLinear.apply(
            x, cache.weight, base.bias, self.is_conv1d, cache.scales, cache.clipped, anchors, *deltas
        )

    def _effective_weight(self, dense: list[str]) -> _EffectiveWeight:
        """``W0 + Σ c_a·D_a`` in a persistent buffer, rebuilt in place only when a delta or W0 changed."""
        w0 = self.get_base_layer().weight
        deltas = [self.slowed_delta[a] for a in dense]
        anchors = [self._anchor(a) for a in dense]
        key = (
            _OptimizerSteps.count,
            tuple(dense),
            w0.data_ptr(),
            w0._version,
            w0.dtype,
            tuple((d.data_ptr(), d._version) for d in deltas),
            tuple((self.slow_factor[a], self.max_drift[a], self.drift_granularity[a]) for a in dense),
            tuple(None if q is None else (q.data_ptr(), q._version, q.shape[-1]) for q in anchors),
        )
        cache = self._weight_cache
        if cache is not None and cache.key == key:
            return cache
        _OptimizerSteps.track()
        scales, clipped = [], []
        with torch.no_grad():  # P(D) of anchored deltas: built once per optimizer step, like the weight itself
            deltas = [d if q is None else project_out(d, q, self.is_conv1d) for d, q in zip(deltas, anchors)]
        for a, d in zip(dense, deltas):
            scale, clip = dense_scale(
                d, self._w0_norm(a, w0.device), self.slow_factor[a], self.max_drift[a], self._row_dim(a)
            )
            scales.append(scale)
            clipped.append(clip)
        with torch.no_grad():
            old = cache.weight if cache is not None else None
            reusable = old is not None and (old.shape, old.device, old.dtype) == (w0.shape, w0.device, w0.dtype)
            buf = old if reusable else torch.empty_like(w0, memory_format=torch.contiguous_format)
            for i, (d, c) in enumerate(zip(deltas, scales)):  # one pass per delta, no temporaries
                into = w0 if i == 0 else buf
                if isinstance(c, float):
                    torch.add(into, d, alpha=c, out=buf)
                else:  # trust-region scale tensor (scalar or per row); no host sync
                    torch.addcmul(into, d, c, out=buf)
        self._weight_cache = _EffectiveWeight(key, buf, scales, clipped)
        return self._weight_cache

    def __repr__(self) -> str:
        return "slowed." + super().__repr__()
