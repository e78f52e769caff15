"""Quick demo of the SLowED tuner: wrap a tiny Llama, train it on a toy sequence task, watch the drift stay bounded.

    python recipes/quick_demo.py --output_dir outputs/quick_demo [--r 8] [--max_drift 0.05] [--steps 60]

Prints loss and weight drift over training, saves the adapter as safetensors and reloads it with
``PeftModel.from_pretrained`` to check the logits. Runs in a few seconds on CPU; no downloads.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from peft import PeftModel, get_peft_model  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402

import slowed_peft  # noqa: E402
from slowed_peft import SLowEDConfig  # noqa: E402


def toy_batch(gen: torch.Generator, bs: int = 8, seq: int = 24, vocab: int = 64) -> torch.Tensor:
    """Counting sequences ``s, s+k, s+2k, ...`` (mod vocab), ``k`` in {1, 2}: learnable, so the loss visibly drops."""
    start = torch.randint(0, vocab, (bs, 1), generator=gen)
    step = torch.randint(1, 3, (bs, 1), generator=gen)
    return (start + step * torch.arange(seq)) % vocab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output_dir", default="outputs/quick_demo")
    ap.add_argument("--r", type=int, default=None, help="None: dense delta; int: low rank")
    ap.add_argument("--slow_factor", type=float, default=0.1)
    ap.add_argument("--max_drift", type=float, default=0.05)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=3e-2)
    args = ap.parse_args()

    torch.manual_seed(0)
    base_dir = os.path.join(args.output_dir, "base")
    AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128,
                                                 num_hidden_layers=2, num_attention_heads=4,
                                                 num_key_value_heads=2)).save_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    model = get_peft_model(base, SLowEDConfig(target_modules="all-linear", r=args.r, slow_factor=args.slow_factor,
                                              max_drift=args.max_drift, task_type="CAUSAL_LM"))
    model.print_trainable_parameters()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    model.train()
    bar = tqdm(range(args.steps), desc="SLowED training")
    for step in bar:
        x = toy_batch(gen)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step % 10 == 0 or step == args.steps - 1:
            drift = slowed_peft.weight_drift(model)
            bar.write(f"step {step:3d}  loss {loss.item():.3f}  drift max {drift.max:.4f}  mean {drift.mean:.4f}")
    model.eval()
    adapter_dir = os.path.join(args.output_dir, "adapter")
    model.save_pretrained(adapter_dir)
    x = toy_batch(gen)
    with torch.no_grad():
        before = model(x).logits
        reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
        diff = (reloaded(x).logits - before).abs().max().item()
    drift = slowed_peft.weight_drift(model)
    print(f"\nmax drift {drift.max:.4f} (bound {args.max_drift}); reload max |Δlogit| {diff:.2e}")
    print(f"adapter saved to {adapter_dir}: {sorted(os.listdir(adapter_dir))}")


if __name__ == "__main__":
    main()
