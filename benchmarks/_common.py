"""Shared helpers for benchmarks: alternating A/B timing with medians, peak memory, JSON output."""

from __future__ import annotations

import gc
import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable

import torch


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def alternate(steps: dict[str, Callable[[], None]], repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Run each step function ``warmup`` times, then ``repeats`` rounds alternating A, B, ...; seconds per call."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(repeats):
        order = list(steps) if i % 2 == 0 else list(reversed(steps))
        for k in order:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            steps[k]()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t0)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RssSampler:
    """Peak resident memory (MiB) above the level at entry, sampled from /proc every few ms in a thread."""

    def __init__(self, interval: float = 0.002) -> None:
        import threading

        self.interval, self.peak, self._stop = interval, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss_mb() - self.base)
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self.base = self.rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss_mb() - self.base)


def write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    gc.collect()


def tiny_tokenizer():
    """A minimal offline tokenizer (the benchmarks feed token ids directly; trainers only need pad/eos)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<pad>": 0, "</s>": 1, "<unk>": 2}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def smollm2_config(layers: int, vocab: int = 49152):
    """A randomly initialised model config of SmolLM2-135M's shape (hidden 576, MLP 1536, 9/3 heads, tied head)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        tie_word_embeddings=True,
    )


# The paper's three students, from their published config.json files (the fields that set the shapes; rope settings,
# dropout and token ids do not change what a step or a fit costs and are left at the defaults).
PAPER_SHAPES: dict[str, dict] = {
    "qwen2.5-1.5b": dict(  # Qwen/Qwen2.5-1.5B: 1.54B parameters, biases on q/k/v
        model_type="qwen2",
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "llama-3.2-1b": dict(  # meta-llama/Llama-3.2-1B: 1.24B parameters
        model_type="llama",
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        vocab_size=128256,
        tie_word_embeddings=True,
    ),
    "bloom-1b1": dict(  # bigscience/bloom-1b1: 1.07B parameters, fused query_key_value, MLP 4 x hidden, biases
        model_type="bloom",
        hidden_size=1536,
        n_layer=24,
        n_head=16,
        vocab_size=250880,
        tie_word_embeddings=True,
    ),
}


def paper_config(name: str, layers: int | None = None, vocab: int | None = None):
    """The config of paper student ``name`` (a key of ``PAPER_SHAPES``), optionally with fewer layers or a smaller
    vocabulary (the decoder layers keep their real width)."""
    from transformers import AutoConfig

    fields = dict(PAPER_SHAPES[name])
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    if layers is not None:
        config.num_hidden_layers = layers  # BLOOM maps it to n_layer
    if vocab is not None:
        config.vocab_size = vocab
    return config


def paper_shape_counts(name: str, rank: int = 16, anchor_rank: int = 64) -> dict:
    """Parameter counts of the full-depth paper student, from a model built on the meta device (no memory).

    ``linear``: weights of the linear layers ``target_modules="all-linear"`` wraps (the LM head excluded); ``lora``:
    the ``r·(in + out)`` entries of LoRA / low-rank SLowED at ``rank``; ``bases_shared`` / ``bases_per_layer``: anchor
    basis entries (``in_features × anchor_rank``) once per group of layers that read one input (q/k/v, gate/up; BLOOM's
    four linears read four different tensors) and once per layer."""
    import torch
    from transformers import AutoModelForCausalLM

    config = paper_config(name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")]
    shared = {_input_group(n): m.in_features for n, m in linears}
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "layers": config.num_hidden_layers,
        "linear": sum(m.weight.numel() for _, m in linears),
        "lora": sum(rank * (m.in_features + m.out_features) for _, m in linears),
        "bases_shared": anchor_rank * sum(shared.values()),
        "bases_per_layer": anchor_rank * sum(m.in_features for _, m in linears),
    }


_SHARED_INPUT = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "gate_proj": "gate_up", "up_proj": "gate_up"}


def _input_group(module_name: str) -> str:
    """Which input tensor a linear layer reads: q/k/v share one, gate/up another, every other linear its own."""
    block, leaf = module_name.rsplit(".", 1)
    return f"{block}/{_SHARED_INPUT.get(leaf, leaf)}"
