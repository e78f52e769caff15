# /// script
# dependencies = [
#     "slowed-peft",
#     "trl>=1.16",
#     "peft>=0.21.2",
# ]
# ///
"""SLowED chain-of-thought distillation (Slow Tuning + Low-Entropy Masking) with TRL.

One flag selects the arm: ``--arm sft`` (plain distillation), ``slow`` (Slow Tuning only), ``lem`` (Low-Entropy
Masking only) or ``slowed`` (both). Drift (``slowed/drift_max``) and the masked fraction (``lem/masked_fraction``)
are logged next to TRL's metrics; the adapter is saved as safetensors in ``--output_dir``.

# CPU demo (embedded SmolLM2-135M-Instruct, built-in CoT data)
```bash
python recipes/slowed_sft.py --config recipes/configs/smollm2-135m-demo.yaml
```

# The paper's students (GPU), e.g. Qwen2.5-1.5B on GSM8K rationales
```bash
python recipes/slowed_sft.py --config recipes/configs/qwen2.5-1.5b.yaml --arm slowed --output_dir Qwen2.5-1.5B-SLowED
accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/slowed_sft.py \
    --config recipes/configs/llama-3.2-1b.yaml --push_to_hub --hub_model_id you/Llama-3.2-1B-SLowED
```

# Ablations on the same budget
```bash
for arm in sft slow lem slowed; do
  python recipes/slowed_sft.py --config recipes/configs/smollm2-135m-demo.yaml --arm $arm --output_dir runs/$arm
done
```
"""

import slowed_peft  # noqa: F401  (registers the SLOWED PEFT type)
from slowed_peft.scripts.sft import main, make_parser

if __name__ == "__main__":
    parser = make_parser()
    script_args, training_args, model_args, slowed_args, _ = parser.parse_args_and_config(
        return_remaining_strings=True
    )
    main(script_args, training_args, model_args, slowed_args)
