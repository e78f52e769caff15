"""Up-front checks that turn deep library errors into messages that name the bad file or value."""

from __future__ import annotations

import json
import os
import struct


SAFETENSORS_NAME = "adapter_model.safetensors"


def check_safetensors_file(path: str) -> None:
    """Raise ``ValueError`` naming ``path`` if it is not a complete, readable safetensors file.

    Checks the 8-byte header length, the JSON header and that every tensor's byte range lies inside the file, so a
    truncated download fails here instead of deep inside ``safetensors`` or ``torch``.
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
            header = json.loads(f.read(n))
        data_len = size - 8 - n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            if end > data_len or start > end:
                raise ValueError(
                    f"tensor {name!r} needs bytes {start}..{end} but the data section has {data_len} bytes"
                )
    except ValueError as err:
        raise ValueError(f"Corrupt or truncated adapter weights file {path!r}: {err}.") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"Corrupt adapter weights file {path!r}: unreadable safetensors header ({err}).") from None


def check_adapter_weights_file(folder: str) -> None:
    """Check ``folder/adapter_model.safetensors`` if it exists (PEFT reports a missing file itself)."""
    path = os.path.join(folder, SAFETENSORS_NAME)
    if os.path.isfile(path):
        check_safetensors_file(path)
