# /// script
# dependencies = ["slowed-peft"]
# ///
"""Reproduce the paper's phenomenon on SmolLM2-135M with real data; the same as ``slowed-replicate``.

```bash
# the whole study (aligned student, four arms, sweep): about 60 minutes on 2 CPU cores
HF_HUB_OFFLINE=1 python recipes/replicate.py --config replicate
# the four arms only, or a ~5-minute smoke run
HF_HUB_OFFLINE=1 python recipes/replicate.py --config replicate --sweep false
HF_HUB_OFFLINE=1 python recipes/replicate.py --quick --output_dir outputs/replicate-quick
# just the aligned student (cached under ~/.cache/slowed_peft/models/aligned/)
HF_HUB_OFFLINE=1 slowed-align
```
"""

from slowed_peft.scripts.replicate import cli


if __name__ == "__main__":
    cli()
