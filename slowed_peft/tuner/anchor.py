"""Fitting the safety anchor: per wrapped layer, the input directions that anchor prompts use, protected from ΔW.

One pass of the *initial* model (adapters disabled) over the anchor prompts, the way PEFT fits its data-driven
adapters (``peft/tuners/lora/corda.py::preprocess_corda``, ``eva.py::initialize_lora_eva_weights``): a forward
pre-hook on every SLowED layer accumulates the uncentred second moment ``C = Σ x xᵀ`` of its inputs (summed in
float64, streamed per batch: no ``[tokens × dim]`` kept), layers that read the same tensor (q/k/v,
gate/up) share one sum, and the forward stops after the last wrapped layer (no LM head). Then each layer's basis ``Q``
is the top eigenvectors of ``C`` (``anchor_rank`` and/or ``anchor_energy``) and is installed as the frozen buffer
``slowed_anchor``. Since the anchor prompts' activations are unchanged by induction over the layers, a full-span anchor
leaves the model's outputs on those prompts exactly as they were, however long it trains.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn


# Eigenvalues below this fraction of a layer's largest one are float64 round-off, not directions the anchor prompts
# use: they are never protected.
NOISE_FLOOR = 1e-12


@dataclass
class AnchorReport:
    """What :func:`fit_anchor` installed: per layer the rank and the share of input energy it protects."""

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


class _StopForward(Exception):
    """Raised by the last hook of a batch: nothing after the last wrapped layer is needed."""


class _SecondMoments:
    """Streaming ``Σ x xᵀ`` per group of layers reading the same input tensor.

    A layer's input is reduced to its second moment in the layer's own pre-hook (the model may change that tensor in
    place later in the forward); the next layers that get the very same tensor object join its group."""

    def __init__(self, layers: dict[str, nn.Module], exact: bool = True) -> None:
        self.layers = layers
        self.dtype = torch.float64 if exact else torch.float32
        self.sums: dict[frozenset, torch.Tensor] = {}
        self.mask: Optional[torch.Tensor] = None
        self._last: Optional[torch.Tensor] = None
        self._gram: Optional[torch.Tensor] = None
        self._names: list[str] = []
        self._seen: set[str] = set()

    def start_batch(self, mask: torch.Tensor) -> None:
        self.mask, self._last, self._gram, self._names, self._seen = mask, None, None, [], set()

    def hook(self, name: str):
        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else kwargs.get("input", kwargs.get("x"))
            if name in self._seen:  # a layer called twice in one forward: its first input counts
                return
            if x is not self._last:
                self._flush()
                self._last, self._gram = x, self._second_moment(x, name)
            self._names.append(name)
            self._seen.add(name)
            if len(self._seen) == len(self.layers):
                self._flush()
                raise _StopForward

        return pre_hook

    def _flush(self) -> None:
        if self._gram is None:
            return
        names = frozenset(self._names)
        if names in self.sums:
            self.sums[names] += self._gram
        else:
            self.sums[names] = self._gram
        self._last, self._gram, self._names = None, None, []

    def _second_moment(self, x: torch.Tensor, name: str) -> torch.Tensor:
        rows = self._token_rows(x)
        gram = (rows.T @ rows).double()  # summed in float64 across batches
        if not bool(torch.isfinite(torch.diagonal(gram)).all()):  # any NaN / inf input shows on the diagonal
            raise ValueError(
                f"fit_anchor: the input of layer {_short(name)!r} is not finite (NaN or inf activations) on the "
                "anchor prompts; check the base model's weights and dtype."
            )
        return gram

    def _token_rows(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to(self.dtype)
        mask = self.mask
        if mask is not None and tuple(x.shape[:-1]) == tuple(mask.shape):
            return x[mask.to(x.device)]
        return x.reshape(-1, x.shape[-1])


def _anchored_layers(peft_model: nn.Module, adapter_name: str) -> dict[str, nn.Module]:
    from .layer import SLowEDLayer

    return {
        name: module
        for name, module in peft_model.named_modules()
        if isinstance(module, SLowEDLayer) and adapter_name in module.slowed_anchor
    }


def _short(name: str) -> str:
    return name.removeprefix("base_model.model.")


def _format(tokenizer: Any, prompts: Sequence[str], chat_template: Optional[bool]) -> list[list[int]]:
    """Token ids of each prompt, chat-formatted with a generation prompt when the tokenizer has a template."""
    use_template = bool(getattr(tokenizer, "chat_template", None)) if chat_template is None else chat_template
    ids = []
    for prompt in prompts:
        if use_template:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
            ids.append(tokenizer(text, add_special_tokens=False)["input_ids"])
        else:
            ids.append(tokenizer(prompt)["input_ids"])
    return ids


@torch.no_grad()
def _with_responses(model: nn.Module, tokenizer: Any, ids: list[list[int]], max_new_tokens: int, batch: int) -> list:
    """Each prompt followed by the model's own greedy response (up to EOS or ``max_new_tokens``)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(ids), batch):
        chunk = ids[i : i + batch]
        width = max(len(s) for s in chunk)
        input_ids = torch.tensor([[pad] * (width - len(s)) + s for s in chunk], device=device)
        attention = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in chunk], device=device)
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
        )[:, width:]
        for prompt, response in zip(chunk, generated.tolist()):
            if eos in response:
                response = response[: response.index(eos)]
            out.append(prompt + response)
    return out


def _top_eigenpairs(second: torch.Tensor, rank: Optional[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors (columns) of a second moment: all of them (``torch.linalg.eigh``), or,
    for a rank well below the width, the top ``rank`` by randomized subspace iteration (Halko et al. 2011: 16 extra
    columns, 2 power steps, then Rayleigh–Ritz) — matrix products instead of a full eigendecomposition, about 10×
    faster at width 1536, and exact where the inputs span fewer than ``rank + 16`` directions."""
    d = second.shape[0]
    if rank is None or 4 * (rank + OVERSAMPLE) > d:
        return torch.linalg.eigh(second)
    generator = torch.Generator(device="cpu").manual_seed(0)
    basis = torch.randn(d, rank + OVERSAMPLE, generator=generator, dtype=second.dtype).to(second.device)
    for _ in range(POWER_STEPS):
        basis, _ = torch.linalg.qr(second @ basis)
    values, vectors = torch.linalg.eigh(basis.T @ second @ basis)
    return values[OVERSAMPLE:], (basis @ vectors)[:, OVERSAMPLE:]


OVERSAMPLE, POWER_STEPS = 16, 2


def _choose_rank(eigenvalues: torch.Tensor, rank: Optional[int], energy: Optional[float]) -> int:
    """How many top eigenvectors to keep: the energy share and/or the rank cap, never noise-level directions."""
    values = eigenvalues.flip(0).clamp_min(0.0)  # descending
    top = float(values[0]) if values.numel() else 0.0
    usable = int((values > NOISE_FLOOR * top).sum()) if top > 0 else 0
    k = usable
    if energy is not None and usable:
        cumulative = torch.cumsum(values[:usable], 0) / values[:usable].sum()
        k = min(usable, int((cumulative < energy - 1e-12).sum()) + 1)
    if rank is not None:
        k = min(k, rank)
    return k


def fit_anchor(
    peft_model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    adapter_name: Optional[str] = None,
    batch_size: int = 16,
    max_length: int = 1024,
    chat_template: Optional[bool] = None,
    max_new_tokens: int = 64,
) -> AnchorReport:
    """Fit and install the safety anchor of every SLowED layer of ``adapter_name`` (default: the active adapter).

    ``prompts`` are plain user requests (chat-formatted here when the tokenizer has a template; ``chat_template``
    forces it on or off). Which tokens count (``anchor_tokens``) and how many directions each layer keeps
    (``anchor_rank`` / ``anchor_energy``) come from the adapter's ``SLowEDConfig``. The statistics are those of the
    initial model (adapters disabled), so fit before training — or after, to re-anchor on the base. Works on a
    ``PeftModel`` from ``get_peft_model`` or on ``trainer.model`` before ``trainer.train()``.

    Raises ``ValueError`` for an adapter without an anchor, no or empty prompts, an ``anchor_rank`` not below a layer's
    input width, non-finite activations, or a layer whose inputs carry no energy on the prompts.
    """
    started = time.time()
    adapter_name = adapter_name or _active_adapter(peft_model)
    config = getattr(peft_model, "peft_config", {}).get(adapter_name)
    if config is None or not getattr(config, "anchored", False):
        raise ValueError(
            f"fit_anchor: adapter {adapter_name!r} has no safety anchor; create it with "
            "SLowEDConfig(anchor_rank=...) and/or anchor_energy=..."
        )
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise ValueError("fit_anchor: no anchor prompts given (need a non-empty list of strings).")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
    if bad:
        raise ValueError(f"fit_anchor: anchor prompt(s) at index {bad[:5]} are empty or not strings.")
    if batch_size < 1 or max_length < 1:
        raise ValueError(f"fit_anchor: batch_size and max_length must be >= 1; got {batch_size}, {max_length}.")
    layers = _anchored_layers(peft_model, adapter_name)
    if not layers:
        raise ValueError(f"fit_anchor: the model has no SLowED layer with adapter {adapter_name!r}.")
    rank = config.anchor_rank
    if rank is not None:
        too_wide = [(n, m.in_features) for n, m in layers.items() if rank >= m.in_features]
        if too_wide:
            name, width = too_wide[0]
            raise ValueError(
                f"fit_anchor: anchor_rank={rank} is not below the input width {width} of layer {_short(name)!r} "
                f"({len(too_wide)} layer(s)): the layer could not learn at all. Use a smaller anchor_rank."
            )

    ids = _format(tokenizer, list(prompts), chat_template)
    was_training = peft_model.training
    peft_model.eval()
    # Products in float64 when an energy share decides the rank (the whole spectrum matters: float32 products lose
    # directions below ~1e-7 of the top one); float32 for a plain top-`anchor_rank` basis (2x faster, same top).
    moments = _SecondMoments(layers, exact=config.anchor_energy is not None)
    handles = []
    tokens = 0
    try:
        with peft_model.disable_adapter():
            if config.anchor_tokens == "prompt+response":
                ids = _with_responses(peft_model, tokenizer, ids, max_new_tokens, batch_size)
            ids = [s[:max_length] for s in ids]
            handles = [m.register_forward_pre_hook(moments.hook(n), with_kwargs=True) for n, m in layers.items()]
            device = next(peft_model.parameters()).device
            with torch.no_grad():
                for i in range(0, len(ids), batch_size):
                    chunk = ids[i : i + batch_size]
                    width = max(len(s) for s in chunk)
                    input_ids = torch.tensor([s + [0] * (width - len(s)) for s in chunk], device=device)
                    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in chunk], device=device)
                    moments.start_batch(mask.bool())
                    tokens += int(mask.sum())
                    try:
                        peft_model(input_ids=input_ids, attention_mask=mask, use_cache=False)
                    except _StopForward:
                        pass
                    moments._flush()
    finally:
        for handle in handles:
            handle.remove()
        peft_model.train(was_training)

    report = AnchorReport(adapter_name=adapter_name, prompts=len(ids), tokens=tokens)
    bases: dict[tuple, tuple[torch.Tensor, float]] = {}
    for name, layer in layers.items():
        groups = tuple(sorted((g for g in moments.sums if name in g), key=lambda g: sorted(g)))
        if not groups:
            raise ValueError(f"fit_anchor: layer {_short(name)!r} was not reached by the forward pass.")
        if groups not in bases:
            second = sum(moments.sums[g] for g in groups)
            values, vectors = _top_eigenpairs(second, rank if config.anchor_energy is None else None)
            k = _choose_rank(values, rank, config.anchor_energy)
            if k == 0:
                raise ValueError(
                    f"fit_anchor: the inputs of layer {_short(name)!r} carry no energy on the anchor prompts "
                    "(all zero); nothing to anchor there."
                )
            total = float(torch.diagonal(second).sum())  # trace: the whole energy, also when only the top is known
            kept = float(values.flip(0)[:k].clamp_min(0).sum())
            bases[groups] = (vectors[:, -k:].flip(1).float().contiguous(), kept / total if total > 0 else 1.0)
        q, share = bases[groups]
        install_anchor(layer, adapter_name, q)
        report.ranks[_short(name)] = q.shape[1]
        report.energy[_short(name)] = share
    report.seconds = round(time.time() - started, 2)
    return report


def _active_adapter(peft_model: nn.Module) -> str:
    active = getattr(peft_model, "active_adapter", "default")
    return active[0] if isinstance(active, (list, tuple)) else active


@torch.no_grad()
def install_anchor(layer: nn.Module, adapter_name: str, basis: torch.Tensor) -> None:
    """Set one layer's protected basis (``in_features × k``, orthonormal columns), checked and kept in float32."""
    if basis.dim() != 2 or basis.shape[0] != layer.in_features:
        raise ValueError(
            f"An anchor basis for this layer must be {layer.in_features} × k; got shape {tuple(basis.shape)} "
            "(fitted on another base model?)."
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
