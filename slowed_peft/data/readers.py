"""Where data files are and how they are read: the data folder, file lookup, JSON lines, and local files as tables.

Training loaders (this package) and evaluation loaders (:mod:`slowed_peft.eval.tasks`) both read files through these
functions, so each file format has one reader. A data folder (``data_dir=`` / ``path=`` arguments, else
``$SLOWED_DATA_DIR``) is laid out as::

    gsm8k/{train,test}.jsonl                                  GSM8K
    distill_step_by_step/{svamp,cqa}/...                      SVAMP / CQA with PaLM rationales
    bbh/bbh/<task>.json, bbh/cot-prompts/<task>.txt           BIG-Bench Hard examples and 3-shot CoT prompts
    arc/ARC-Challenge-{Train,Dev,Test}.jsonl                  ARC-Challenge
    agieval/<task>.jsonl                                      AGIEval (English multiple choice)
    advbench/harmful_behaviors.csv                            AdvBench
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional, Union

from datasets import Dataset, load_dataset

from ..utils.paths import BUNDLED_DATA, ENV_VAR, data_roots


PathLike = Union[str, Path]

ARC_FILES = ("arc/ARC-Challenge-{split}.jsonl", "arc/ARC-Challenge/ARC-Challenge-{split}.jsonl")
AGIEVAL_FILES = ("agieval/{task}.jsonl",)


def search_roots(data_dir: Optional[PathLike] = None) -> list[Path]:
    """The folders a data file is looked up in: ``[data_dir]`` when given, else ``$SLOWED_DATA_DIR`` (when set) and
    the bundled files (``ValueError`` if the variable names no folder)."""
    return data_roots(None if data_dir is None else Path(data_dir))


def data_root(data_dir: Optional[PathLike] = None) -> Path:
    """``data_dir`` when given, else ``$SLOWED_DATA_DIR``, else the bundled files (the first of :func:`search_roots`)."""
    return search_roots(data_dir)[0]


def default_data_path(subdir: str) -> Path:
    """``<data folder>/<subdir>`` of the first folder that has it: ``$SLOWED_DATA_DIR``, then the bundled files;
    ``FileNotFoundError`` saying how to provide it when neither does."""
    roots = data_roots()
    for root in roots:
        if (root / subdir).is_dir():
            return root / subdir
    raise FileNotFoundError(_not_found(roots, subdir))


def find_data_file(root: Union[Path, list[Path]], *candidates: str) -> Path:
    """The first of ``candidates`` (paths relative to ``root``, or to each folder of a list in turn) that is a file;
    ``FileNotFoundError`` naming where it looked otherwise."""
    roots = root if isinstance(root, list) else [root]
    for folder in roots:
        for rel in candidates:
            if (folder / rel).is_file():
                return folder / rel
    raise FileNotFoundError(_not_found(roots, candidates[0]))


def _not_found(roots: list[Path], rel: str) -> str:
    """The message for a data file or folder that no searched folder holds."""
    searched = [r for r in roots if r != BUNDLED_DATA]
    where = f"{searched[0] / rel}" if searched else rel
    if BUNDLED_DATA in roots:
        return (
            f"Data file not found: {where} — it is not among the files shipped with slowed_peft (AdvBench, SVAMP "
            f"rationales, ARC-Challenge). Set {ENV_VAR} to a folder holding it (layout: slowed_peft.data.readers), or "
            "pass path= / data_dir= (or a Hub dataset id where the loader takes one)."
        )
    return f"Data file not found: {where} (pass data_dir= or set {ENV_VAR})."


def _utf8_error(path: PathLike, data: bytes, err: UnicodeDecodeError, line: int = 0) -> ValueError:
    """``ValueError`` naming file, 1-based line and byte column of the first byte that is not UTF-8."""
    start = err.start
    if not line:  # ``data`` is the whole file: count the lines before the bad byte
        line = data.count(b"\n", 0, start) + 1
    column = start - (data.rfind(b"\n", 0, start) + 1) + 1
    return ValueError(
        f"{path}:{line}:{column}: not UTF-8 text (byte {data[start]:#04x}); data files must be UTF-8 encoded."
    )


def read_text(path: PathLike) -> str:
    """A UTF-8 text file (a leading byte-order mark dropped); ``ValueError`` naming file, line and column of a byte
    that is not UTF-8, ``FileNotFoundError`` naming the file when it is absent."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Data file not found: {path}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise _utf8_error(path, data, err) from None


def check_utf8(path: PathLike) -> None:
    """``ValueError`` naming file, line and column of the first byte of ``path`` that is not UTF-8 (streamed in
    1 MiB chunks; ``datasets`` would otherwise load such bytes into the table and fail later, far from the file)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise _utf8_error(path, raw, err, line=number) from None


def read_json_file(path: PathLike) -> Any:
    """One JSON document (e.g. a BBH task file); ``ValueError`` naming file, line and column when it is empty, not
    UTF-8 or not valid JSON."""
    text = read_text(path)
    if not text.strip():
        raise ValueError(f"{path}: the file is empty (expected a JSON document).")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}:{err.colno}: not valid JSON ({err.msg}).") from None


def _json_line(path: PathLike, number: int, raw: bytes) -> Optional[dict[str, Any]]:
    """Line ``number`` of a JSON-lines file as a dict (``None`` for a blank line); ``ValueError`` naming the place."""
    try:
        line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as err:
        raise _utf8_error(path, raw, err, line=number) from None
    if not line.strip():
        return None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{number}:{err.colno}: not a JSON line ({err.msg}).") from None
    if not isinstance(row, dict):
        raise ValueError(f"{path}:{number}:1: expected a JSON object per line, got {type(row).__name__} {row!r:.60}.")
    return row


def iter_json_lines(path: PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` for every non-blank line of a JSON-lines file (1-based, so errors can name the line).

    ``FileNotFoundError`` naming the file when it is absent; ``ValueError`` naming file, line and column for a line
    that is not UTF-8, not JSON, or not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Data file not found: {path}")
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            row = _json_line(path, number, raw)
            if row is not None:
                yield number, row


def read_json_lines(path: PathLike, limit: Optional[int] = None) -> list[dict[str, Any]]:
    """The first ``limit`` (default: all) non-empty lines of a JSON-lines file as dicts.

    Errors as :func:`iter_json_lines`; also ``ValueError`` when the file holds no rows at all (an empty file is a
    broken download, not an empty benchmark).
    """
    return [row for _, row in read_json_lines_numbered(path, limit)]


def read_json_lines_numbered(path: PathLike, limit: Optional[int] = None) -> list[tuple[int, dict[str, Any]]]:
    """:func:`read_json_lines` with each row's 1-based line number, for errors that name the line of a bad row."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}.")
    rows: list[tuple[int, dict[str, Any]]] = []
    if limit == 0:
        return rows
    for number, row in iter_json_lines(path):
        rows.append((number, row))
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise ValueError(f"{path}: the file is empty (no JSON lines).")
    return rows


def row_error(path: PathLike, line: int, err: Exception) -> ValueError:
    """A ``ValueError`` for a bad row, naming its file and 1-based line (``KeyError``: the missing field)."""
    what = f"missing field {err.args[0]!r}" if isinstance(err, KeyError) else str(err)
    return ValueError(f"{path}:{line}: {what}")


def line_of_row(path: PathLike, index: int) -> Optional[int]:
    """The 1-based line of row ``index`` (0-based) of a JSON-lines file, or ``None`` for other files."""
    path = Path(path)
    if path.suffix.lower() != ".jsonl":
        return None
    with path.open("rb") as handle:
        seen = -1
        for number, raw in enumerate(handle, start=1):
            seen += bool(raw.strip())
            if seen == index:
                return number
    return None


@contextmanager
def rows_of(path: PathLike) -> Iterator[None]:
    """Prefix ``path`` (and, for a JSON-lines file, the line of the ``row N`` named) to a ``ValueError`` raised while
    converting the rows read from it, e.g. ``data.jsonl:3: row 3: Missing answer (null or empty cell)``."""
    try:
        yield
    except ValueError as err:
        match = re.match(r"row (\d+): ", str(err))
        line = line_of_row(path, int(match.group(1)) - 1) if match else None
        raise ValueError(f"{path}:{line}: {err}" if line else f"{path}: {err}") from err


def _diagnose(path: Path, builder: str) -> None:
    """Raise the ``ValueError`` (file, line, column) that explains why ``datasets`` could not read ``path``."""
    if builder not in ("json", "csv"):
        return
    text = read_text(path)  # raises on bytes that are not UTF-8
    if builder == "csv":
        return
    try:
        json.loads(text)
        return  # one JSON document: the problem is its shape, not its syntax
    except json.JSONDecodeError:
        pass
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            _json_line(path, number, raw)


def read_table_file(path: PathLike, builder: str = "json") -> Dataset:
    """A local file as one ``datasets`` table (Arrow-cached by ``datasets``; ``builder``: json / csv / parquet).

    ``FileNotFoundError`` naming the file when it is absent; ``ValueError`` when it holds no rows, and one naming
    file, line and column when it is not UTF-8 (always checked) or not valid JSON (checked when ``datasets`` fails).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Data file not found: {path}")
    with path.open("rb") as handle:
        head = handle.read(4096)
    if not head or (builder != "parquet" and not head.strip()):
        raise ValueError(f"{path}: the file is empty (no rows to convert).")
    if builder != "parquet":
        check_utf8(path)
    try:
        return load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:  # datasets raises StopIteration, UnicodeDecodeError, DatasetGenerationError, ...
        if isinstance(err, ValueError) and "no data" in str(err):  # 'Instruction "train" corresponds to no data!'
            raise ValueError(f"{path}: the file is empty (no rows to convert).") from err
        _diagnose(path, builder)
        raise ValueError(f"{path}: could not be read as a {builder} table ({type(err).__name__}: {err}).") from err


def read_arc(split: str = "test", data_dir: Optional[PathLike] = None, limit: Optional[int] = None) -> list[dict]:
    """Raw ARC-Challenge rows of ``split`` (``train``/``dev``/``test``): ``{"id", "question": {"stem", "choices"},
    "answerKey"}``."""
    name = split.capitalize()
    return read_json_lines(find_data_file(search_roots(data_dir), *(f.format(split=name) for f in ARC_FILES)), limit)


def read_agieval(task: str, data_dir: Optional[PathLike] = None, limit: Optional[int] = None) -> list[dict]:
    """Raw AGIEval rows of ``task``: ``{"passage", "question", "options": ["(A)...", ...], "label"}``."""
    return read_json_lines(find_data_file(search_roots(data_dir), *(f.format(task=task) for f in AGIEVAL_FILES)), limit)
