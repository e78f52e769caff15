"""What the arms around the safety anchor need besides the tuner: anchor prompts by source, the random-direction
control, refusal replay rows and CorDA-KPM's covariance pass. :func:`slowed_peft.scripts.training.train_arm` calls
:func:`prepare_arm` before training, so every script runs these arms the same way."""

from __future__ import annotations

import math
import random
import time
from typing import Any, Optional

import torch

from .arguments import ARMS, SLowEDArguments


# The ``template`` source: one-word user turns, so the anchor sees the chat template (system prompt, role markers)
# and almost nothing else — no data at all. Template tokens carry ~73% of short requests' input energy (docs/results.md).
TEMPLATE_TURNS = ("Hi", "Hello", "Thanks", "OK", "Yes", "No", "Please", "Help", "Question", "Start")


def anchor_prompts(args: SLowEDArguments, train_dataset: Any = None) -> Optional[list[str]]:
    """The anchor prompts of ``args.anchor_source`` (at most ``anchor_limit``); None for the ``random`` control.

    ``benign``: the alignment set's generic requests (train part: the evaluated benign requests are the other part);
    ``harmful``: AdvBench's train part (the evaluated prompts are its test part); ``train``: the user turns of the
    distillation data itself, so no extra data is needed; ``template``: the chat template around one-word user turns
    (:data:`TEMPLATE_TURNS`: no data at all). The train / held-out splits are drawn with
    ``anchor_split_seed`` (the alignment's), never with the training seed, so no evaluated prompt is an anchor."""
    source, limit, split_seed = args.anchor_source, args.anchor_limit, args.anchor_split_seed
    if source == "random":
        return None
    if source == "template":
        return list(TEMPLATE_TURNS[:limit])
    if source == "benign":
        from ..data.alignment import benign_instructions

        return benign_instructions(seed=split_seed)[0][:limit]
    if source == "harmful":
        from ..eval import load_advbench

        try:
            return load_advbench(None, split="train", seed=split_seed, train_fraction=0.6)[:limit]
        except FileNotFoundError as err:  # its message names path= / data_dir=, which no script flag reaches
            raise ValueError(
                "anchor_source='harmful' reads AdvBench's train part (advbench/harmful_behaviors.csv) from "
                "$SLOWED_DATA_DIR or the copy shipped with slowed_peft, and found neither. Set SLOWED_DATA_DIR to a "
                "folder holding advbench/harmful_behaviors.csv (the scripts have no flag for the anchor prompts' path)."
            ) from err
    if train_dataset is None:
        raise ValueError("anchor_source='train' needs the training data set.")
    prompts = []
    for row in train_dataset:
        prompt = row["prompt"]
        text = prompt[-1]["content"] if isinstance(prompt, list) else str(prompt)
        if text.strip():
            prompts.append(text)
        if len(prompts) >= limit:
            break
    return prompts


@torch.no_grad()
def install_random_anchor(peft_model: Any, rank: int, seed: int = 0) -> dict[str, int]:
    """The control for the anchor: ``rank`` random orthonormal input directions per layer (same size, no data)."""
    from ..tuner.anchor import install_anchor
    from ..tuner.layer import SLowEDLayer

    adapter = peft_model.active_adapter
    generator = torch.Generator().manual_seed(seed)
    ranks = {}
    for name, module in peft_model.named_modules():
        if isinstance(module, SLowEDLayer) and adapter in module.slowed_anchor:
            k = min(rank, module.in_features - 1)
            q, _ = torch.linalg.qr(torch.randn(module.in_features, k, generator=generator, dtype=torch.float64))
            install_anchor(module, adapter, q.float())
            ranks[name] = k
    return ranks


def replay_rows(n_train: int, fraction: float, seed: int = 0, split_seed: int = 0, chat: bool = True) -> list[dict]:
    """``ceil(fraction · n_train)`` refusal rows: prompts drawn (with ``seed``) from AdvBench's train part of the split
    drawn with ``split_seed`` (the alignment's: the evaluated prompts are the other part), the alignment's refusals;
    chat messages (``chat``) or plain text."""
    from ..data.alignment import refusal_response
    from ..data.formats import chat_row
    from ..eval import load_advbench

    count = max(1, math.ceil(fraction * n_train))
    harmful = load_advbench(None, split="train", seed=split_seed, train_fraction=0.6)
    chosen = random.Random(seed).sample(range(len(harmful)), count)
    if not chat:
        return [{"prompt": harmful[i], "completion": refusal_response(i, split_seed)} for i in chosen]
    return [chat_row(harmful[i], refusal_response(i, split_seed)) for i in chosen]


def with_replay(train_dataset: Any, fraction: float, seed: int = 0, split_seed: int = 0) -> Any:
    """The distillation rows (``prompt`` / ``completion`` only; other columns are dropped) plus the refusal replay
    rows in the same format, shuffled together."""
    from datasets import Dataset

    rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in train_dataset]
    chat = not rows or isinstance(rows[0]["prompt"], list)
    rows += replay_rows(len(rows), fraction, seed, split_seed, chat)
    random.Random(seed).shuffle(rows)
    return Dataset.from_list(rows)


def corda_preprocess(model: Any, tokenizer: Any, lora_config: Any, prompts: list[str]) -> None:
    """PEFT's ``preprocess_corda`` (knowledge-preserved mode) with the anchor prompts as its covariance data."""
    from peft.tuners.lora.corda import preprocess_corda

    from ..data.formats import format_prompts

    texts = format_prompts(tokenizer, prompts)
    device = next(model.parameters()).device

    @torch.no_grad()
    def run_model() -> None:  # one prompt per forward: CorDA's hook reads a [tokens, dim] input (batch 1)
        for text in texts:
            enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
            model(**{k: v.to(device) for k, v in enc.items()})

    if lora_config.target_modules == "all-linear":  # preprocess_corda matches names; it does not expand this
        output = model.get_output_embeddings()
        lora_config.target_modules = {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module is not output
        }
    was_training = model.training
    model.eval()
    preprocess_corda(model, lora_config, run_model=run_model)
    model.train(was_training)


def prepare_data(arm: SLowEDArguments, train_dataset: Any, seed: int) -> Any:
    """The training data an arm sees: the replay arm's refusal rows mixed in; others unchanged."""
    if not ARMS[arm.arm].replay:
        return train_dataset
    return with_replay(train_dataset, arm.replay_fraction, seed, arm.anchor_split_seed)


def prepare_model(arm: SLowEDArguments, model: Any, tokenizer: Any, peft_config: Any, train_dataset: Any, seed: int):
    """Before the trainer wraps the model: CorDA's covariance pass (corda arm)."""
    if ARMS[arm.arm].corda:
        corda_preprocess(model, tokenizer, peft_config, anchor_prompts(arm, train_dataset) or [])


@torch.no_grad()
def response_dataloader(
    peft_model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    max_length: int = 1024,
):
    """Anchor batches for ``anchor_tokens="prompt+response"``: each chat-formatted prompt followed by the *initial*
    model's own greedy answer (adapters disabled; up to EOS or ``max_new_tokens``), for
    :func:`~slowed_peft.fit_anchor`. Generation lives here, not in the tuner, which only takes tokenized batches.

    Args:
        peft_model: The ``PeftModel`` to be anchored (its base model answers).
        tokenizer: Its tokenizer (left-pads the prompts for generation).
        prompts: Non-empty user requests.
        max_new_tokens: Longest answer, in tokens.
        batch_size: Prompts per generation batch and per anchor batch.
        max_length: Longest prompt + answer kept (a warning names how many were cut).

    Returns:
        A ``DataLoader`` of ``input_ids`` / ``attention_mask`` batches (see :func:`slowed_peft.anchor_dataloader`).
    """
    from ..data.anchor_batches import format_anchor_prompts, token_dataloader

    ids = format_anchor_prompts(tokenizer, prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    device = next(peft_model.parameters()).device
    was_training = peft_model.training
    peft_model.eval()
    out = []
    try:
        with peft_model.disable_adapter():
            for i in range(0, len(ids), batch_size):
                chunk = ids[i : i + batch_size]
                width = max(len(s) for s in chunk)
                generated = peft_model.generate(
                    input_ids=torch.tensor([[pad] * (width - len(s)) + s for s in chunk], device=device),
                    attention_mask=torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in chunk], device=device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad,
                )[:, width:]
                for prompt, response in zip(chunk, generated.tolist()):
                    if eos in response:
                        response = response[: response.index(eos)]
                    out.append(prompt + response)
    finally:
        peft_model.train(was_training)
    return token_dataloader(out, pad if pad is not None else 0, batch_size, max_length)


def anchor_batches(peft_model: Any, tokenizer: Any, prompts: list[str], adapter_name: Optional[str] = None):
    """The anchor batches the adapter's ``anchor_tokens`` asks for: the prompts alone
    (:func:`slowed_peft.anchor_dataloader`) or followed by the initial model's answers (:func:`response_dataloader`)."""
    from ..data.anchor_batches import anchor_dataloader

    config = peft_model.peft_config[adapter_name or peft_model.active_adapter]
    if getattr(config, "anchor_tokens", "prompt") == "prompt+response":
        return response_dataloader(peft_model, tokenizer, prompts)
    return anchor_dataloader(tokenizer, prompts)


def fit_arm_anchor(arm: SLowEDArguments, peft_model: Any, tokenizer: Any, train_dataset: Any, seed: int) -> Any:
    """After the trainer wrapped the model: fit (or, for the control, draw) the anchor of an anchored arm, and log
    what was fitted (the :class:`~slowed_peft.AnchorReport`, also written into the adapter card when it is saved)."""
    if not ARMS[arm.arm].anchor:
        return None
    if arm.anchor_source == "random":
        if arm.anchor_rank is None:
            raise ValueError("anchor_source='random' needs anchor_rank (the number of random directions).")
        return install_random_anchor(peft_model, arm.anchor_rank, seed)
    from ..tuner.anchor import initialize_anchor_weights
    from ..tuner.anchor_fit import get_anchor_state_dict

    started = time.time()
    dist = torch.distributed
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    state = None
    if rank == 0:  # one fit, sent to every other rank: the bases are the same on all of them by construction
        prompts = anchor_prompts(arm, train_dataset)
        batches = anchor_batches(peft_model, tokenizer, prompts)
        state = get_anchor_state_dict(peft_model, batches, show_progress_bar=False, cache_file=arm.anchor_cache_file)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [None if state is None else {k: v.cpu() for k, v in state.items()}]
        dist.broadcast_object_list(box, src=0)
        state = box[0]
    report = initialize_anchor_weights(peft_model, state)
    report.seconds = round(time.time() - started, 2)  # the fit (or cache read) and the install, not the install alone
    if rank == 0:
        print(f"[{arm.arm}] fitted on {arm.anchor_source} prompts: {report.summary()}", flush=True)
    return report
