"""Up-front checks that turn deep library errors into messages that name the bad file or value."""

from __future__ import annotations

import json
import math
import os
import struct


SAFETENSORS_NAME = "adapter_model.safetensors"


# Bits per element of the safetensors dtypes (as the safetensors format defines them).
SAFETENSORS_DTYPE_BITS = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "I64": 64,
    "U64": 64,
    "F64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_header(header: object, data_len: int) -> None:
    """``ValueError`` (without the file name) unless ``header`` describes tensors that tile the data section exactly,
    as the safetensors format requires: contiguous, non-overlapping, each ``prod(shape) x dtype`` bytes long."""
    if not isinstance(header, dict):
        raise ValueError(f"the header is a JSON {type(header).__name__}, not an object")
    metadata = header.get("__metadata__")
    if metadata is not None and (
        not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values())
    ):
        raise ValueError("'__metadata__' must be an object of strings")
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise ValueError(f"tensor {name!r} is described by a JSON {type(info).__name__}, not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
            raise ValueError(f"tensor {name!r} has no valid data_offsets [start, end] ({offsets!r:.80})")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise ValueError(f"tensor {name!r} has an invalid shape {shape!r:.80} (a list of non-negative integers)")
        if dtype not in SAFETENSORS_DTYPE_BITS:
            raise ValueError(f"tensor {name!r} has an unknown dtype {dtype!r:.40}")
        start, end = offsets
        if start > end or end > data_len:
            raise ValueError(f"tensor {name!r} needs bytes {start}..{end} but the data section has {data_len} bytes")
        numel = math.prod(shape)
        bits = numel * SAFETENSORS_DTYPE_BITS[dtype]
        if bits % 8 or bits // 8 != end - start:
            dims = "x".join(str(d) for d in shape) or "scalar"
            raise ValueError(
                f"tensor {name!r}: a {dims} {dtype} tensor needs {bits / 8:g} bytes but the range of its "
                f"data_offsets {start}..{end} has {end - start}"
            )
        spans.append((start, end, name))
    position = 0
    for start, end, name in sorted(spans):
        if start != position:
            what = "overlaps the previous tensor" if start < position else f"leaves a gap of {start - position} bytes"
            raise ValueError(f"tensor {name!r} (bytes {start}..{end}) {what}")
        position = end
    if position != data_len:
        raise ValueError(f"the data section has {data_len - position} bytes after the last tensor (a corrupt file)")


def check_safetensors_file(path: str) -> None:
    """Raise ``ValueError`` naming ``path`` if it is not a complete, readable safetensors file.

    Checks the 8-byte header length, the JSON header (an object, not nested past Python's recursion limit) and that
    the tensors tile the data section exactly — each ``prod(shape) x dtype`` bytes at its ``data_offsets``, no
    overlap, no gap — so a truncated download or an edited header fails here, naming the file, instead of deep inside
    ``safetensors`` or ``torch``.
    """
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"file is {size} bytes, too short for a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise ValueError(f"header length {n} exceeds the file size {size}")
            raw = f.read(n)
        try:
            header = json.loads(raw)
        except RecursionError:
            raise ValueError("the JSON header is nested too deeply") from None
        _check_header(header, size - 8 - n)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"Corrupt adapter weights file {path!r}: unreadable safetensors header ({err}).") from None
    except ValueError as err:
        raise ValueError(f"Corrupt or truncated adapter weights file {path!r}: {err}.") from None


def check_adapter_weights_file(folder: str) -> None:
    """Check ``folder/adapter_model.safetensors`` if it exists (PEFT reports a missing file itself)."""
    path = os.path.join(folder, SAFETENSORS_NAME)
    if os.path.isfile(path):
        check_safetensors_file(path)


def check_adapter_name(name: object) -> None:
    """Raise ``ValueError`` naming ``name`` unless it is a plain, non-empty name that stays inside a folder.

    PEFT's ``save_pretrained`` writes a non-default adapter to ``os.path.join(save_directory, adapter_name)``: an
    absolute path, a path separator or ``..`` would write elsewhere (or overwrite another adapter).
    """
    problem = None
    if not isinstance(name, str) or not name:
        problem = "must be a non-empty string"
    elif "/" in name or "\\" in name or (os.sep in name) or (os.altsep and os.altsep in name):
        problem = "must not contain a path separator"
    elif os.path.isabs(name) or os.path.splitdrive(name)[0]:
        problem = "must not be an absolute path"
    elif name in (".", "..") or "\x00" in name:
        problem = "must not be '.', '..' or contain NUL"
    if problem is not None:
        raise ValueError(
            f"Invalid adapter_name={name!r}: it {problem} (save_pretrained uses it as a sub-folder name). Use a plain "
            "name such as 'safety' or 'run-2'."
        )
