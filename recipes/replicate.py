# /// script
# dependencies = ["slowed-peft"]
# ///
"""Reproduce the paper's phenomenon on SmolLM2-135M with real data (see docs/results.md).

```bash
# everything docs/results.md reports (aligned student, four arms, sweep): about 60 minutes on 2 CPU cores
python recipes/replicate.py --config recipes/configs/replicate.yaml
# the four arms only, or a ~5-minute smoke run
python recipes/replicate.py --config recipes/configs/replicate.yaml --sweep false
python recipes/replicate.py --quick --output_dir outputs/replicate-quick
# just the aligned student (cached under ~/.cache/slowed_peft/models/aligned/)
python -m slowed_peft.scripts.align
```
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import slowed_peft  # noqa: F401,E402  (registers the SLOWED PEFT type)
from slowed_peft.scripts.replicate import run  # noqa: E402

if __name__ == "__main__":
    run()
