"""Compressed saving of dense SLowED deltas: at most 4 bits per delta entry, the trust region kept after rounding.

A dense adapter stores ``D`` (float32, one number per base weight). What a user needs is the effective delta
``ΔW = c(D)·D`` (γ and the trust region applied), and fine-tuning deltas compress well (BitDelta, Liu et al. 2024).
With ``SLowEDConfig(save_precision="4bit")`` (the default is ``"fp32"``) every dense ``ΔW`` is saved as

* ``slowed_qcodes``: ``b``-bit codes, bit-packed into ``uint8`` (``b`` in 1..8, chosen per matrix);
* ``slowed_qscale``: one float16 scale per output row (least-squares fit to the row given its codes);
* ``slowed_qbook``: the matrix's ``2**b`` code values (a 1-D k-means "codebook" of the row-normalised entries);
* ``slowed_qmeta``: ``[out_features, in_features, b]`` (int32),

with ``ΔW[i, j] = qscale[i] · qbook[code[i, j]]`` in ``(out, in)`` orientation (transposed back for ``Conv1D``).
The bits are allocated across matrices by reverse water-filling (matrices with larger entries get more bits) so that
codes, scales, code books and metadata together take at most ``BITS_PER_ENTRY`` bits per entry. After rounding, the
scales are shrunk where needed so that ``‖ΔW_rec‖ ≤ ρ‖W0‖`` holds on the reconstructed delta itself (per matrix or per
row), and they are rounded towards zero. Loading (``decompress_state_dict``) turns the four tensors back into
``slowed_delta = ΔW_rec / γ``: inside the trust region the forward pass then applies exactly ``ΔW_rec``.
``save_precision="fp32"`` stores ``D`` exactly, as before.
"""

from __future__ import annotations

import heapq
import math
from typing import Optional

import torch

from .functional import SQ_NORM_FLOOR
from .registration import PREFIX


SAVE_PRECISIONS = ("4bit", "fp32")
BITS_PER_ENTRY = 4.0  # the budget: codes + scales + code books + metadata + file header, per delta entry
# Matrices so small that the per-matrix overhead (scales, code book, header) would leave fewer bits than this for
# scales + codes (a 32x32 test model) exceed the budget instead of losing their precision.
FLOOR_BITS_PER_ENTRY = 3.0
HEADER_BYTES_PER_TENSOR = 72  # safetensors JSON entry besides the key: dtype, shape, offsets
MIN_BITS, MAX_BITS = 1, 8
KMEANS_ITERS = 12
KMEANS_SAMPLE = 1 << 18  # entries used to fit a code book (all entries are then coded)

DELTA = f"{PREFIX}delta"
CODES, SCALE, BOOK, META = (f"{PREFIX}q{n}" for n in ("codes", "scale", "book", "meta"))
COMPRESSED_PARTS = (CODES, SCALE, BOOK, META)


# ------------------------------------------------------------------------------------------------------ bit packing
def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in ``[0, 2**bits)`` into a flat ``uint8`` tensor (little-endian bit order)."""
    flat = codes.reshape(-1).to(torch.uint8 if bits <= 8 else torch.int32)
    if 8 % bits == 0:  # 1, 2, 4 or 8 bits: whole codes per byte, no bit stream needed
        per_byte = 8 // bits
        pad = (-flat.numel()) % per_byte
        if pad:
            flat = torch.cat([flat, flat.new_zeros(pad)])
        groups = flat.reshape(-1, per_byte).to(torch.int32)
        shifts = torch.arange(0, 8, bits, dtype=torch.int32, device=flat.device)
        return (groups << shifts).sum(dim=1, dtype=torch.int32).to(torch.uint8)
    shifts = torch.arange(bits, dtype=torch.uint8, device=flat.device)
    bitstream = ((flat[:, None] >> shifts) & 1).reshape(-1)
    pad = (-bitstream.numel()) % 8
    if pad:
        bitstream = torch.cat([bitstream, bitstream.new_zeros(pad)])
    weights = (2 ** torch.arange(8, dtype=torch.int32, device=flat.device)).to(torch.uint8)
    return (bitstream.reshape(-1, 8) * weights).sum(dim=1, dtype=torch.int32).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``numel`` codes as ``int64``."""
    bytes_ = packed.reshape(-1).to(torch.int32)
    bitstream = ((bytes_[:, None] >> torch.arange(8, dtype=torch.int32, device=bytes_.device)) & 1).reshape(-1)
    bitstream = bitstream[: numel * bits].reshape(numel, bits)
    return (bitstream << torch.arange(bits, dtype=torch.int32, device=bytes_.device)).sum(dim=1).long()


def packed_bytes(numel: int, bits: int) -> int:
    return (numel * bits + 7) // 8


# -------------------------------------------------------------------------------------------------- quantisation
def _codebook(x: torch.Tensor, bits: int, generator: torch.Generator) -> torch.Tensor:
    """``2**bits`` sorted code values fitted to the entries ``x`` by 1-D k-means (Lloyd), from quantile init.

    The sample is sorted once: a code's cell is then a contiguous slice, found by ``searchsorted`` of the cell
    boundaries, and its mean comes from a prefix sum — each iteration costs O(k log n), not O(n log k)."""
    flat = x.reshape(-1).float()
    if flat.numel() > KMEANS_SAMPLE:
        flat = flat[torch.randint(flat.numel(), (KMEANS_SAMPLE,), generator=generator, device="cpu").to(flat.device)]
    ordered = flat.sort().values
    n, k = ordered.numel(), 1 << bits
    prefix = torch.cat([ordered.new_zeros(1, dtype=torch.float64), ordered.double().cumsum(0)])
    # torch.quantile's "linear" interpolation at the cell centres (k + 0.5) / k, from the sorted sample
    position = (torch.arange(k, dtype=torch.float64, device=flat.device) + 0.5) / k * (n - 1)
    low = position.floor().long().clamp(max=n - 1)
    high = (low + 1).clamp(max=n - 1)
    frac = (position - low.double()).float()
    book = ordered[low] + frac * (ordered[high] - ordered[low])
    for _ in range(KMEANS_ITERS):
        # the cell of code j holds the entries in (mid[j-1], mid[j]]: what torch.bucketize(x, mids) assigns
        ends = torch.searchsorted(ordered, (book[1:] + book[:-1]) / 2, right=False)
        bounds = torch.cat([ends.new_zeros(1), ends, ends.new_full((1,), n)])
        counts = bounds[1:] - bounds[:-1]
        sums = prefix[bounds[1:]] - prefix[bounds[:-1]]
        means = (sums / counts.clamp_min(1).double()).float()
        book = torch.where(counts > 0, means, book).sort().values
    return book


def quantize_matrix(delta: torch.Tensor, bits: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(codes, scale, book)`` of a float ``(out, in)`` matrix: row-rms normalisation, k-means code book, then the
    least-squares scale of each row given its codes (float32; rounding and the trust region come later)."""
    d = delta.float()
    rms = d.pow(2).mean(dim=1, keepdim=True).sqrt()
    x = (d / rms.clamp_min(1e-30)).contiguous()
    book = _codebook(x, bits, torch.Generator().manual_seed(seed))
    codes = torch.bucketize(x, (book[1:] + book[:-1]) / 2)
    q = book[codes]
    scale = (q * d).sum(dim=1) / q.pow(2).sum(dim=1).clamp_min(1e-30)
    scale = torch.where(rms.squeeze(1) > 0, scale, torch.zeros_like(scale))
    return codes, scale, book


def dequantize_matrix(codes: torch.Tensor, scale: torch.Tensor, book: torch.Tensor) -> torch.Tensor:
    return scale.float()[:, None] * book.float()[codes]


def _half_toward_zero(x: torch.Tensor) -> torch.Tensor:
    """float16 rounding that never increases ``|x|`` (so a bound checked before rounding still holds after it)."""
    h = x.half()
    over = h.float().abs() > x.abs()
    return torch.where(over, torch.nextafter(h, torch.zeros_like(h)), h)


def fit_trust_region(
    codes: torch.Tensor, scale: torch.Tensor, book: torch.Tensor, bound: Optional[torch.Tensor], per_row: bool
) -> torch.Tensor:
    """float16 scales with ``‖ΔW_rec‖ ≤ bound`` (a scalar, or one bound per row), shrinking only where rounding broke it.

    ``bound`` is ``ρ‖W0‖`` (``None``: no trust region); a relative margin of 1e-6 absorbs float32 summation order."""
    if bound is not None:
        q = book.float()[codes]
        row_sq = scale.float().pow(2) * q.pow(2).sum(dim=1)
        limit = bound.float().reshape(-1) * (1 - 1e-6)
        if per_row:
            f = torch.clamp(limit / row_sq.clamp_min(SQ_NORM_FLOOR).sqrt(), max=1.0)
        else:
            f = torch.clamp(limit / row_sq.sum().clamp_min(SQ_NORM_FLOOR).sqrt(), max=1.0)
        scale = scale.float() * f
    return _half_toward_zero(scale.float())


# ----------------------------------------------------------------------------------------------- bit allocation
def overhead_bits(out_features: int, bits: int) -> int:
    """Bits besides the codes: float16 scales, the float32 code book and the int32 metadata."""
    return 16 * out_features + 32 * (1 << bits) + 3 * 32


def header_bits(module_key: str, suffix_len: int = 8) -> int:
    """Estimated safetensors header bits of one compressed module: its four parts and its ``slowed_w0_norm``."""
    names = [*COMPRESSED_PARTS, f"{PREFIX}w0_norm"]
    return 8 * sum(len(module_key) + len(n) + suffix_len + HEADER_BYTES_PER_TENSOR for n in names)


def allocate_bits(
    shapes: list[tuple[int, int]],
    mean_squares: list[float],
    budget: float = BITS_PER_ENTRY,
    fixed_bits: int = 0,
) -> list[int]:
    """Bits per matrix minimising the total squared error at ``budget`` bits per entry, everything included
    (``fixed_bits``: what does not depend on the bits, e.g. file headers; paid from the budget down to
    ``FLOOR_BITS_PER_ENTRY``).

    Reverse water-filling with the usual model ``MSE(b) ∝ σ²·4^-b``: starting from ``MIN_BITS`` everywhere, the next
    bit goes to the matrix with the largest error reduction per stored bit, while the total stays within budget."""
    numels = [o * i for o, i in shapes]
    total_budget = max(budget * sum(numels) - fixed_bits, FLOOR_BITS_PER_ENTRY * sum(numels))
    bits = [MIN_BITS] * len(shapes)
    used = sum(n * b + overhead_bits(o, b) for n, b, (o, _) in zip(numels, bits, shapes))
    heap = [(-(ms * 4.0**-MIN_BITS), k) for k, ms in enumerate(mean_squares)]
    heapq.heapify(heap)
    while heap:
        _, k = heapq.heappop(heap)
        b, (o, _) = bits[k], shapes[k]
        cost = numels[k] + overhead_bits(o, b + 1) - overhead_bits(o, b)
        if used + cost > total_budget:
            continue  # this matrix cannot grow; smaller ones further down the heap might
        bits[k], used = b + 1, used + cost
        if bits[k] < MAX_BITS:
            heapq.heappush(heap, (-(mean_squares[k] * 4.0 ** -bits[k]), k))
    return bits


def compress_deltas(
    deltas: dict[str, torch.Tensor], bounds: dict[str, Optional[torch.Tensor]], per_row: dict[str, bool]
) -> dict[str, torch.Tensor]:
    """Compress effective deltas ``{module_key: ΔW (out, in)}`` into ``{module_key + "." + part: tensor}``.

    ``bounds[key]`` is ``ρ‖W0‖`` (scalar or per row) or ``None``; ``per_row[key]`` whether it bounds each row."""
    keys = list(deltas)
    for key in keys:
        if not bool(torch.isfinite(deltas[key]).all()):
            raise ValueError(f"Cannot save SLowED adapter: the delta of module {key!r} is not finite (NaN or inf).")
    shapes = [tuple(deltas[k].shape) for k in keys]
    mean_squares = [float(deltas[k].float().pow(2).mean()) for k in keys]
    fixed = sum(header_bits(k) + (0 if bounds[k] is None else 32 * bounds[k].numel()) for k in keys)
    bits = allocate_bits(shapes, mean_squares, fixed_bits=fixed)
    out: dict[str, torch.Tensor] = {}
    for key, b, (o, i) in zip(keys, bits, shapes):
        codes, scale, book = quantize_matrix(deltas[key], b)
        scale = fit_trust_region(codes, scale, book, bounds[key], per_row[key])
        out[f"{key}.{CODES}"] = pack_bits(codes, b).cpu()
        out[f"{key}.{SCALE}"] = scale.cpu()
        out[f"{key}.{BOOK}"] = book.float().cpu()
        out[f"{key}.{META}"] = torch.tensor([o, i, b], dtype=torch.int32)
    return out


def decompress_matrix(parts: dict[str, torch.Tensor], where: str) -> torch.Tensor:
    """``ΔW_rec`` (float32, ``(out, in)``) from one module's four tensors; ``ValueError`` naming ``where`` if broken."""
    meta = parts[META]
    if meta.dtype != torch.int32 or tuple(meta.shape) != (3,):
        raise ValueError(f"{where}: {META!r} must be int32 [out, in, bits]; got {meta.dtype} {tuple(meta.shape)}.")
    o, i, b = (int(v) for v in meta)
    if o < 1 or i < 1 or not MIN_BITS <= b <= MAX_BITS:
        raise ValueError(f"{where}: {META!r} = {[o, i, b]} is not a valid [out, in, bits].")
    expected = {
        CODES: (torch.uint8, (packed_bytes(o * i, b),)),
        SCALE: (torch.float16, (o,)),
        BOOK: (torch.float32, (1 << b,)),
    }
    for part, (dtype, shape) in expected.items():
        t = parts[part]
        if t.dtype != dtype or tuple(t.shape) != shape:
            raise ValueError(
                f"{where}: {part!r} should be {dtype} of shape {shape} for a {o}x{i} matrix at {b} bits; got "
                f"{t.dtype} of shape {tuple(t.shape)} (truncated or edited file?)."
            )
    if not (bool(torch.isfinite(parts[SCALE]).all()) and bool(torch.isfinite(parts[BOOK]).all())):
        raise ValueError(f"{where}: {SCALE!r} or {BOOK!r} holds NaN or inf.")
    codes = unpack_bits(parts[CODES], b, o * i).reshape(o, i)
    delta = dequantize_matrix(codes, parts[SCALE], parts[BOOK])
    check_reconstructed(delta, where)
    return delta


def check_reconstructed(delta: torch.Tensor, where: str, what: str = "reconstructed delta") -> None:
    """``ValueError`` naming ``where`` unless ``delta`` and its float32 squared norm are finite.

    Scales and code books can each be finite while their product is not (NaN logits), or while ``‖ΔW‖²`` overflows
    float32 (the trust region then scales the delta to zero: the adapter silently does nothing)."""
    if not bool(torch.isfinite(delta).all()):
        raise ValueError(
            f"{where}: the {what} ({SCALE!r} x {BOOK!r}) is not finite (NaN or inf): a tampered or corrupt file."
        )
    sq = delta.float().pow(2).sum()
    if not bool(torch.isfinite(sq)):
        raise ValueError(
            f"{where}: the {what} ({SCALE!r} x {BOOK!r}) is finite but its norm overflows float32 (max |entry| "
            f"{float(delta.abs().max()):.3g}): a tampered or corrupt file."
        )


def compressed_modules(state_dict: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``{module_key: {part: tensor}}`` of the compressed deltas in a checkpoint state dict (other keys ignored)."""
    found: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        module, _, part = key.rpartition(".")
        if part in COMPRESSED_PARTS:
            found.setdefault(module, {})[part] = tensor
    return found


def stored_bits_per_entry(state_dict: dict[str, torch.Tensor]) -> float:
    """Bits of the compressed tensors per delta entry (``math.nan`` if the checkpoint holds none)."""
    modules = compressed_modules(state_dict)
    entries = sum(int(p[META][0]) * int(p[META][1]) for p in modules.values() if META in p)
    stored = sum(t.numel() * t.element_size() * 8 for p in modules.values() for t in p.values())
    return stored / entries if entries else math.nan
