# /// script
# dependencies = ["slowed-peft"]
# ///
"""Evaluate a student (optionally with its SLowED adapter) on safety and reasoning; the same as ``slowed-eval``.

```bash
# the demo's adapter: built-in harmful probes, benign prompts, demo CoT test set
python recipes/evaluate.py --adapter outputs/demo/adapter --output outputs/demo/eval_after.json
# the paper's benchmarks from $SLOWED_DATA_DIR (AdvBench held-out part, GSM8K, SVAMP, ARC, BBH), 100 items each
python recipes/evaluate.py --model_name_or_path Qwen/Qwen2.5-1.5B --adapter Qwen2.5-1.5B-SLowED \
    --safety_sets advbench benign --tasks gsm8k svamp arc bbh --limit 100 --output eval.json
```
"""

from slowed_peft.scripts.evaluate import cli


if __name__ == "__main__":
    cli()
