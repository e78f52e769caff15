"""How the safety anchor's bases are stored in ``adapter_model.safetensors``: once per group of layers, fp32 or bf16.

**One basis per group.** Layers that read the same input tensor (q/k/v of an attention block, gate/up of an MLP) get
the identical basis from ``fit_anchor``. On save (:func:`share_anchor_bases`, called by
``SLowEDModel._get_adapter_state_dict``) the bases of one adapter that are bit-identical (same tensor, or
``torch.equal``) are written once: the first layer in the model's module order keeps its key
``<module>.slowed_anchor``; every other layer of the group gets ``<module>.slowed_anchor_ref`` instead, a 1-D uint8
tensor holding the UTF-8 path of the module whose basis it uses, spelled as in the file's keys (e.g.
``base_model.model.model.layers.0.self_attn.q_proj``). The map is not in the safetensors metadata because PEFT's
``save_pretrained`` writes a fixed ``{"format": "pt"}`` there and gives the tuner no hook to add to it; a reference per
layer keeps the file self-describing (tens of bytes per layer) and lets a partial file be reported per layer.

On load (:func:`expand_anchor_bases`, called by ``SLowEDModel._remap_adapter_state_dict_for_load`` before PEFT's
remapping) each reference becomes its owner's tensor (the same object, so the layers of a group share one buffer after
loading, as they do after the fit). The key, shape and orthonormality checks downstream then see one basis per layer,
exactly the layout written before bases were shared, which therefore still loads unchanged. A reference to a basis the
file lacks, or a layer with both a basis and a reference, raises ``ValueError`` naming the keys and the file.

**bf16 storage** (``SLowEDConfig(anchor_save_dtype="bf16")``) halves the bytes. bfloat16 keeps 8 significant bits, so
a stored basis is orthonormal only to about 4e-3 (``|QᵀQ − I|``); on load it is checked against ``LOW_PRECISION_TOL``
(an edited or foreign tensor still fails) and re-orthonormalised: QR in float64 with the signs of ``R``'s diagonal made
positive, so each column stays next to the stored one and the span is exactly that of the stored columns. The
guarantee ``ΔW·x = 0`` then holds, to float32 round-off, for ``x`` in the span of the *loaded* basis, which is within
about 2^-9 rad of the span the adapter was trained with: outputs on the anchor prompts move by that much (figures in
``benchmarks/bench_anchor_bytes.py``), and a Trainer run resumed from a bf16 checkpoint is not bit-equal to an unbroken
one. Use the default ``"fp32"`` for exact round trips.
"""

from __future__ import annotations

import torch

from .anchor import check_orthonormal
from .registration import PREFIX


ANCHOR = f"{PREFIX}anchor"
ANCHOR_REF = f"{PREFIX}anchor_ref"
ANCHOR_SAVE_DTYPES = ("fp32", "bf16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

# |QᵀQ − I|_max a basis stored in bf16 / fp16 may show: 2u + u² with the unit round-off u = 2^-9 of bfloat16 is 3.9e-3
# for the worst entry; 1e-2 leaves room and still refuses a scaled or foreign tensor.
LOW_PRECISION_TOL = 1e-2
# What the float64 QR must give back (float32 storage of an orthonormal float64 matrix: ~1e-7).
REORTHONORMAL_TOL = 1e-5


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor  # a DTensor under FSDP2


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.device == b.device and a.data_ptr() == b.data_ptr() and a.stride() == b.stride():
        return True
    return a.device == b.device and torch.equal(a, b)


def encode_reference(module: str) -> torch.Tensor:
    """The stored form of a reference: the owner module's path as a 1-D uint8 tensor of its UTF-8 bytes."""
    return torch.tensor(list(module.encode("utf-8")), dtype=torch.uint8)


def _decode_reference(tensor: torch.Tensor, key: str, where: str) -> str:
    if tensor.dtype != torch.uint8 or tensor.dim() != 1 or tensor.numel() == 0:
        raise ValueError(
            f"Corrupt SLowED adapter {where}: {key!r} must be a 1-D uint8 tensor (the UTF-8 path of the module whose "
            f"anchor basis this layer shares); got a {tensor.dtype} tensor of shape {tuple(tensor.shape)}."
        )
    try:
        return bytes(tensor.cpu().tolist()).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"Corrupt SLowED adapter {where}: {key!r} is not a UTF-8 module path.") from None


@torch.no_grad()
def share_anchor_bases(config, adapter_name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` (keys with the adapter name) with each group of bit-identical anchor bases of ``adapter_name`` stored
    once and the others replaced by references; the kept bases cast to ``config.anchor_save_dtype``.

    Args:
        config: the adapter's ``SLowEDConfig`` (its ``anchor_save_dtype``; ``"fp32"`` if it has none).
        adapter_name: the adapter being saved (its keys end with ``.<adapter_name>``).
        state: PEFT's selection of the adapter's tensors; changed in place.

    Returns:
        ``state``. Unfitted bases (``k = 0``) and adapters without an anchor are left as they are.
    """
    suffix = f".{ANCHOR}.{adapter_name}"
    dtype = _DTYPES[getattr(config, "anchor_save_dtype", "fp32")]
    owners: dict[tuple, list[tuple[str, torch.Tensor]]] = {}
    for key in [k for k in state if k.endswith(suffix)]:
        basis = _full(state[key]).detach()
        if basis.dim() != 2 or basis.shape[1] == 0:
            continue
        module = key[: -len(suffix)]
        # candidates share the shape and the first row: a cheap bucket, then an exact comparison
        bucket = owners.setdefault((tuple(basis.shape), basis.dtype, tuple(basis[0].tolist())), [])
        owner = next((name for name, kept in bucket if _same(kept, basis)), None)
        if owner is None:
            bucket.append((module, basis))
            state[key] = basis.to(dtype).contiguous()
        else:
            del state[key]
            state[f"{module}.{ANCHOR_REF}.{adapter_name}"] = encode_reference(owner)
    return state


@torch.no_grad()
def reorthonormalise(stored: torch.Tensor, what: str) -> torch.Tensor:
    """A basis stored in reduced precision, checked (``LOW_PRECISION_TOL``) and re-orthonormalised in float64.

    Args:
        stored: the ``in_features × k`` basis as read from the file (bf16 or fp16).
        what: how errors name it (file and key).

    Returns:
        A float32 ``in_features × k`` basis with orthonormal columns spanning the stored columns, each column the
        stored one up to rounding (QR with the signs of ``R``'s diagonal made positive). Tensors that are no basis
        (not 2-D, ``k = 0`` or ``k > in_features``) come back as float32 for the shape checks to report.
    """
    if stored.dim() != 2 or stored.shape[1] == 0 or stored.shape[1] > stored.shape[0]:
        return stored.float()
    check_orthonormal(stored, what, tol=LOW_PRECISION_TOL)
    q, r = torch.linalg.qr(stored.double())
    signs = torch.sign(torch.diagonal(r))
    q = (q * torch.where(signs == 0, torch.ones_like(signs), signs)).float().contiguous()
    check_orthonormal(q, f"{what} after re-orthonormalisation", tol=REORTHONORMAL_TOL)
    return q


@torch.no_grad()
def expand_anchor_bases(state: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """A checkpoint state dict (keys without the adapter name) with one ``slowed_anchor`` per layer again.

    Args:
        state: the tensors read from the adapter file; changed in place.
        where: how errors name the file (``persist.weights_file_hint``).

    Returns:
        ``state`` (a copy if anything changes) with every ``slowed_anchor_ref`` replaced by its owner's basis (the same tensor) and every basis
        stored in bf16 / fp16 re-orthonormalised to float32 (:func:`reorthonormalise`).

    Raises:
        ValueError: naming the file and keys, for a reference to a basis the file does not have, a layer with both a
            basis and a reference, a reference that is no module path, or a low-precision basis far from orthonormal.
    """
    tail = f".{ANCHOR}"
    low = [k for k, v in state.items() if k.endswith(tail) and v.dtype in (torch.bfloat16, torch.float16)]
    references = [k for k in state if k.endswith(f".{ANCHOR_REF}")]
    if not low and not references:
        return state
    state = dict(state)  # the caller's dict (e.g. one passed to set_peft_model_state_dict) stays as it was
    for key in low:
        state[key] = reorthonormalise(state[key], f"Corrupt SLowED adapter {where}: the anchor basis {key!r}")
    for key in references:
        module = key[: -len(ANCHOR_REF) - 1]
        if f"{module}{tail}" in state:
            raise ValueError(
                f"Corrupt SLowED adapter {where}: module {module!r} has both an anchor basis {f'{module}{tail}'!r} and "
                f"a reference {key!r} to another layer's basis (an edited file?)."
            )
        owner = _decode_reference(state[key], key, where)
        owner_key = f"{owner}{tail}"
        if owner_key not in state:
            raise ValueError(
                f"Corrupt SLowED adapter {where}: {key!r} says layer {module!r} shares the anchor basis of {owner!r}, "
                f"but the file has no {owner_key!r} (a partial or edited file?)."
            )
    for key in references:  # after checking all of them: a reference is never resolved to another reference
        module = key[: -len(ANCHOR_REF) - 1]
        state[f"{module}{tail}"] = state[f"{_decode_reference(state[key], key, where)}{tail}"]
        del state[key]
    return state
