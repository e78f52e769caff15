"""The math of Slow Tuning: trust-region scales and a fused dense-delta linear with its own backward.

``ΔW = c·D`` with ``c = γ·min(1, ρ‖W0‖ / ‖γD‖)`` (per matrix, or per output row). Inside the region the gradient
w.r.t. ``D`` is ``γ·G``; outside it is ``c·(G − ⟨G,D⟩/‖D‖²·D)`` (the derivative of the radial projection).

With a safety anchor (an orthonormal basis ``Q`` of protected input directions) ``D`` is replaced by its projection
``P(D) = D − (D Q) Qᵀ`` everywhere above; since ``P`` is a symmetric projection, the gradient w.r.t. ``D`` is the one
w.r.t. ``P(D)``, projected: ``P(c·(G − k·P(D))) = c·(P(G) − k·P(D))`` with ``k = ⟨P(G), P(D)⟩/‖P(D)‖²``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
import torch.nn.functional as F


# Squared norms are floored so that rsqrt/min never produce NaN or inf at D = 0 (the initial state).
SQ_NORM_FLOOR = 1e-24

Scale = Union[float, torch.Tensor]


class Clipped(NamedTuple):
    """Where a dense delta's trust region binds: ``mask`` is a bool tensor (scalar, or one per output row) that is
    True where ``‖γ·D‖ > ρ‖W0‖``; ``row_dim`` is the axis a per-row norm reduces (``None``: whole matrix)."""

    mask: torch.Tensor
    row_dim: Optional[int]


def trust_region_scale(sq_norm: torch.Tensor, w0_norm: torch.Tensor, gamma: float, rho: Optional[float]) -> Scale:
    """Differentiable scale ``c`` such that ``‖c·D‖ <= ρ‖W0‖`` given ``sq_norm = ‖D‖²`` (matrix or per row)."""
    if rho is None:
        return gamma
    norm = sq_norm.clamp_min(SQ_NORM_FLOOR).sqrt()
    return gamma * torch.clamp(rho * w0_norm / (gamma * norm), max=1.0)


def project_out(d: torch.Tensor, anchor: Optional[torch.Tensor], transposed: bool = False) -> torch.Tensor:
    """``P(D)``: ``D`` with its action on span(``anchor``) removed, so that ``P(D)·x = 0`` for ``x`` in that span.

    ``anchor`` is ``in_features × k`` with orthonormal columns (``None`` or ``k = 0``: ``D`` itself). ``D`` is in the
    base weight's layout: ``out × in`` (``D − (D Q) Qᵀ``) or, for ``Conv1D`` (``transposed``), ``in × out``
    (``D − Q (Qᵀ D)``). Differentiable; computed in float32 at least — also under ``torch.autocast``, whose bf16
    matmuls would leave ~3e-3 of ``D``'s action on span(``anchor``) — and returned in ``D``'s dtype."""
    if anchor is None or anchor.shape[-1] == 0:
        return d
    work = d if d.dtype in (torch.float32, torch.float64) else d.float()
    q = anchor.to(device=d.device, dtype=work.dtype)
    with torch.autocast(device_type=d.device.type, enabled=False):
        projected = work - q @ (q.T @ work) if transposed else work - (work @ q) @ q.T
    return projected.to(d.dtype)


def project_out_(grad: torch.Tensor, anchor: Optional[torch.Tensor], transposed: bool = False) -> torch.Tensor:
    """In-place :func:`project_out` of a gradient (no autograd); returns ``grad``."""
    if anchor is None or anchor.shape[-1] == 0:
        return grad
    q = anchor.to(device=grad.device, dtype=grad.dtype)
    with torch.autocast(device_type=grad.device.type, enabled=False):
        if transposed:
            grad.sub_(q @ (q.T @ grad))
        else:
            grad.sub_((grad @ q) @ q.T)
    return grad


def sq_norm(d: torch.Tensor, row_dim: Optional[int]) -> torch.Tensor:
    """``‖D‖²`` in float32: a scalar (``row_dim=None``) or one value per output row (reduced over ``row_dim``)."""
    d = d.float()
    if row_dim is None:
        return (d * d).sum()
    return (d * d).sum(dim=row_dim, keepdim=True)


def sq_norm_no_grad(d: torch.Tensor, row_dim: Optional[int]) -> torch.Tensor:
    """:func:`sq_norm` without autograd and without a ``D``-sized temporary (one pass over ``D``)."""
    with torch.no_grad():
        n = torch.linalg.vector_norm(d, dim=row_dim, keepdim=row_dim is not None, dtype=torch.float32)
    return n * n


class DenseDeltaLinear(torch.autograd.Function):
    """``y = x·W_effᵀ + b`` with ``W_eff = W0 + Σ c_a·D_a`` precomputed; backward gives each ``D_a`` its gradient.

    ``weight_eff`` is a cached buffer rebuilt (in place) only when a delta changed. Saving it for backward means a
    stale graph (forward, optimizer step, backward) raises torch's in-place modification error instead of silently
    using the wrong weight. ``anchors`` (one per delta, ``None`` for no anchor): ``W_eff`` holds ``c_a·P_a(D_a)`` and
    each delta's gradient is projected (see the module docstring).
    """

    @staticmethod
    def forward(ctx, x, weight_eff, bias, transposed, scales, clipped, anchors, *deltas):  # noqa: D102
        if transposed:  # transformers' Conv1D: weight is (in, out), y = x @ W + b
            size_out = x.shape[:-1] + (weight_eff.shape[1],)
            out = torch.addmm(bias, x.reshape(-1, x.shape[-1]), weight_eff).view(size_out)
        else:
            out = F.linear(x, weight_eff, bias)
        ctx.transposed = transposed
        ctx.scales = scales
        ctx.clipped = clipped
        ctx.anchors = anchors
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight_eff, *deltas)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        x, weight_eff, *deltas = ctx.saved_tensors
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        x2 = x.reshape(-1, x.shape[-1])
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = (g2 @ weight_eff.T if ctx.transposed else g2 @ weight_eff).view(x.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = g2.sum(0)
        first = _FIRST_DELTA_INPUT
        if len(deltas) == 1 and ctx.needs_input_grad[first]:  # the common case: scale folded into the product
            grad = _single_delta_grad(x2, g2, deltas[0], ctx.scales[0], ctx.clipped[0], ctx.transposed, ctx.anchors[0])
            return (grad_x, None, grad_bias, None, None, None, None, grad)
        grad_deltas = []
        grad_w = None
        for i, delta in enumerate(deltas):
            if not ctx.needs_input_grad[first + i]:
                grad_deltas.append(None)
                continue
            if grad_w is None:
                grad_w = x2.T @ g2 if ctx.transposed else g2.T @ x2
            grad_deltas.append(
                _delta_grad(grad_w, delta, ctx.scales[i], ctx.clipped[i], ctx.anchors[i], ctx.transposed)
            )
        return (grad_x, None, grad_bias, None, None, None, None, *grad_deltas)


_FIRST_DELTA_INPUT = 7  # position of the first delta among DenseDeltaLinear.forward's inputs (after ctx)


def _is_clipped(clipped: Optional[Clipped]) -> bool:
    return clipped is not None and bool(clipped.mask.any())


def _single_delta_grad(
    x2, g2, delta, scale: Scale, clipped: Optional[Clipped], transposed: bool, anchor: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``∂L/∂D`` for one delta without weight-sized temporaries: inside the trust region the scale ``c`` multiplies
    the smaller GEMM operand (tokens × out) or the product in place; on the boundary the projection is in place.
    With an anchor the smaller of the input (tokens × in) and the product (out × in) is projected."""
    tokens, out_features = g2.shape
    in_features = x2.shape[-1]
    on_boundary = _is_clipped(clipped)
    fold = not on_boundary and tokens < in_features  # scaling g2 touches fewer numbers than scaling the product
    if fold:
        g2 = g2 * (scale if isinstance(scale, float) or scale.dim() == 0 else scale.reshape(1, -1))
    anchored = anchor is not None and anchor.shape[-1] > 0
    project_input = anchored and tokens < out_features  # (x P)ᵀ g = P(xᵀ g): project the smaller operand
    if project_input:
        q = anchor.to(device=x2.device, dtype=x2.dtype)
        x2 = x2 - (x2 @ q) @ q.T
    grad = (x2.T @ g2 if transposed else g2.T @ x2).to(delta.dtype)
    if anchored and not project_input:
        project_out_(grad, anchor, transposed)
    if on_boundary:
        row_dim = clipped.row_dim
        kept = project_out(delta, anchor, transposed) if anchored else delta
        dots = (grad * kept).sum() if row_dim is None else (grad * kept).sum(dim=row_dim, keepdim=True)
        k = dots / sq_norm_no_grad(kept, row_dim).clamp_min(SQ_NORM_FLOOR)
        k = torch.where(clipped.mask, k, torch.zeros_like(k)).to(delta.dtype)
        grad.addcmul_(kept, k, value=-1.0)
    if not fold:
        grad.mul_(scale)
    return grad


def _delta_grad(
    grad_w: torch.Tensor,
    delta: torch.Tensor,
    scale: Scale,
    clipped: Optional[Clipped],
    anchor: Optional[torch.Tensor] = None,
    transposed: bool = False,
) -> torch.Tensor:
    """Chain rule through ``ΔW = c(P(D))·P(D)``: ``c·(P(G) − k·P(D))``, ``k = ⟨P(G),P(D)⟩/‖P(D)‖²`` where the trust
    region is active (``P`` the identity without an anchor)."""
    g = project_out(grad_w.to(delta.dtype), anchor, transposed)
    if not _is_clipped(clipped):
        return g * scale
    kept = project_out(delta, anchor, transposed)
    row_dim = clipped.row_dim
    dots = (g * kept).sum() if row_dim is None else (g * kept).sum(dim=row_dim, keepdim=True)
    k = dots / sq_norm(kept, row_dim).clamp_min(SQ_NORM_FLOOR)
    k = torch.where(clipped.mask, k, torch.zeros_like(k))
    return (g - k.to(delta.dtype) * kept) * scale


def dense_scale(
    delta: torch.Tensor, w0_norm: torch.Tensor, gamma: float, rho: Optional[float], row_dim: Optional[int]
) -> tuple[Scale, Optional[Clipped]]:
    """Non-differentiable scale ``c`` of one dense delta and where its trust region binds (for the fused path)."""
    if rho is None:
        return gamma, None
    with torch.no_grad():
        c = trust_region_scale(sq_norm_no_grad(delta, row_dim), w0_norm, gamma, rho)
    return c.to(delta.dtype), Clipped(c < gamma, row_dim)


class LowRankTrustRegionScale(torch.autograd.Function):
    """``B_eff = c·B`` with ``c = γ·min(1, ρ‖W0‖ / ‖γ·B@A‖)`` (matrix, or per row of ``B@A``) and its exact gradient.

    One node instead of the ~10 small differentiable ops of the norm-and-clamp chain. Inside the trust region the
    gradient is ``γ·G_B`` (nothing for ``A``); on the boundary, with ``s = ⟨G_B, B⟩`` and ``n² = ‖B@A‖²`` (per row
    for ``"row"``), ``∂L/∂B = c·G_B − (s·c/n²)·B·AAᵀ`` and ``∂L/∂A = −Bᵀ·diag(s·c/n²)·B·A``.
    """

    @staticmethod
    def forward(ctx, lora_b, lora_a, w0_norm, gamma: float, rho: float, per_row: bool):  # noqa: D102
        with torch.no_grad():
            aat = lora_a.float() @ lora_a.float().T
            b = lora_b.float()
            sq = ((b @ aat) * b).sum(dim=1, keepdim=True) if per_row else ((b.T @ b) * aat).sum()
            c = trust_region_scale(sq, w0_norm, gamma, rho)
            clipped = c < gamma
        ctx.save_for_backward(lora_b, lora_a, aat, c, sq, clipped)
        return lora_b * c.to(lora_b.dtype)

    @staticmethod
    def backward(ctx, grad_b_eff):  # noqa: D102
        lora_b, lora_a, aat, c, sq, clipped = ctx.saved_tensors
        g = grad_b_eff.float()
        b = lora_b.float()
        grad_b = g * c
        grad_a = None
        if bool(clipped.any()):
            s = (g * b).sum(dim=1, keepdim=True) if sq.dim() else (g * b).sum()
            w = torch.where(clipped, s * c / sq.clamp_min(SQ_NORM_FLOOR), torch.zeros_like(c))
            grad_b = grad_b - w * (b @ aat)
            if ctx.needs_input_grad[1]:
                grad_a = -((b * w).T @ b) @ lora_a.float()
                grad_a = grad_a.to(lora_a.dtype)
        return grad_b.to(lora_b.dtype), grad_a, None, None, None, None
