# /// script
# dependencies = ["slowed-peft"]
# ///
"""Does SLowED keep more safety than a lower learning rate, LoRA or an EMA at the same learning? ``slowed-frontier``.

```bash
# the whole study (resumable: rerun the same command after an interruption); see docs/results.md for its wall time
HF_HUB_OFFLINE=1 python recipes/frontier.py --config frontier
# some methods only, one seed
HF_HUB_OFFLINE=1 python recipes/frontier.py --config frontier --methods "sft lr=1e-4" slowed "sft lr=1e-5" --seeds 0
# a smoke run of a few minutes
HF_HUB_OFFLINE=1 python recipes/frontier.py --quick --output_dir outputs/frontier-quick
```
"""

from slowed_peft.scripts.study import cli


if __name__ == "__main__":
    cli()
