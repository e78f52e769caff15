# /// script
# dependencies = ["slowed-peft"]
# ///
"""Reproduce the paper's phenomenon on SmolLM2-135M with real data; the same as ``slowed-replicate`` (the study
engine with the shipped ``replicate`` config: the paper's four arms, checkpoints at steps 8, 16, 24).

```bash
HF_HUB_OFFLINE=1 python recipes/replicate.py                      # resumable; see docs/results.md for the wall time
HF_HUB_OFFLINE=1 python recipes/replicate.py --quick true --output_dir outputs/replicate-quick   # smoke run
# just the aligned student (cached under ~/.cache/slowed_peft/models/aligned/)
HF_HUB_OFFLINE=1 slowed-align
```
"""

from slowed_peft.scripts.study import replicate_cli as cli


if __name__ == "__main__":
    cli()
