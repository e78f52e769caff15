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
