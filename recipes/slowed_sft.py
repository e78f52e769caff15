# /// script
# dependencies = [
#     "slowed-peft",
#     "trl>=1.16",
#     "peft>=0.21.2",
# ]
# ///
"""SLowED chain-of-thought distillation (Slow Tuning + Low-Entropy Masking) with TRL; the same as ``slowed-sft``.

One flag selects the arm: ``--arm sft`` (plain distillation), ``slow`` (Slow Tuning only), ``lem`` (Low-Entropy
Masking only), ``slowed`` (both) or ``full`` (all weights, no adapter). Drift (``slowed/drift_max``) and the masked
fraction (``lem/masked_fraction``) are logged next to TRL's metrics; the adapter is saved as safetensors in
``--output_dir``. ``--config`` takes a YAML path or a config shipped with the package (``slowed-sft --help`` lists
them).

# CPU demo (embedded SmolLM2-135M-Instruct, built-in CoT data)
```bash
python recipes/slowed_sft.py --config smollm2-135m-demo
```

# The paper's students (GPU), e.g. Qwen2.5-1.5B on GSM8K rationales
```bash
python recipes/slowed_sft.py --config qwen2.5-1.5b --arm slowed --output_dir Qwen2.5-1.5B-SLowED
accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/slowed_sft.py \
    --config llama-3.2-1b --push_to_hub --hub_model_id you/Llama-3.2-1B-SLowED
```

# Ablations on the same budget
```bash
for arm in sft slow lem slowed; do
  python recipes/slowed_sft.py --config smollm2-135m-demo --arm $arm --output_dir runs/$arm
done
```
"""

from slowed_peft.scripts.sft import cli


if __name__ == "__main__":
    cli()
