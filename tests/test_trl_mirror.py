"""Guard for the code SLowEDTrainer copies from TRL: fail when the installed TRL's mirrored lines change."""

from __future__ import annotations

import ast
import hashlib
import inspect
import textwrap

import pytest
import trl
from trl import SFTTrainer

from slowed_peft.masking.entropy import HAS_FUSED_HEAD
from slowed_peft.masking.trainer import TRL_MIRRORED_VERSION


# (first line, last line) of each mirrored region of `SFTTrainer.compute_loss`, in `ast.unparse` form (comments and
# formatting normalised away), and the sha256 of the regions as TRL 1.16.0 has them.
REGIONS = {
    "live loss (SLowEDTrainer.compute_loss)": (
        "per_token_loss = -outputs.log_probs",
        "loss = loss + weighted_aux_loss / steps",
    ),
    "metrics (SLowEDTrainer._log_trl_metrics)": (
        "num_valid = self.accelerator.gather_for_metrics(",
        "self._metrics[mode]['aux_loss'].append(aux_loss)",
    ),
}
MIRRORED_SHA256 = {
    "live loss (SLowEDTrainer.compute_loss)": "2b3be35f3f681ea0ed2d533892fd527ad5b67ad99ae282fbbb85c186977d4c6d",
    "metrics (SLowEDTrainer._log_trl_metrics)": "782a046b2619d3a084ec393b35900f29e1f5069b6ad68d201e690e1906f17c91",
}


def mirrored_regions() -> dict[str, str]:
    """The normalised text of each region in the installed TRL (``"<missing>"`` when an anchor is gone)."""
    source = ast.unparse(ast.parse(textwrap.dedent(inspect.getsource(SFTTrainer.compute_loss))))
    lines = source.splitlines()
    out = {}
    for name, (first, last) in REGIONS.items():
        starts = [i for i, line in enumerate(lines) if line.strip().startswith(first)]
        ends = [i for i, line in enumerate(lines) if line.strip().startswith(last)]
        found = starts and ends and starts[0] <= ends[0]
        out[name] = textwrap.dedent("\n".join(lines[starts[0] : ends[0] + 1])) if found else "<missing>"
    return out


@pytest.mark.skipif(
    not HAS_FUSED_HEAD,
    reason="TRL < 1.15 has no fused-head branch to mirror; the live loss runs on full logits there, and "
    "tests/test_trainer.py::test_live_path_keeping_every_token_trains_and_logs_like_trls_own_loss checks it against "
    "that TRL's own loss and metrics",
)
def test_mirrored_trl_code_is_unchanged():
    changed = {}
    for name, text in mirrored_regions().items():
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest != MIRRORED_SHA256[name]:
            changed[name] = f"sha256 {digest}:\n{text}"
    assert not changed, (
        f"trl {trl.__version__}'s SFTTrainer.compute_loss changed in the lines SLowEDTrainer copies (copied from trl "
        f"{TRL_MIRRORED_VERSION}). Re-check slowed_peft/masking/trainer.py against it: {', '.join(changed)}; port the "
        "change (loss normalisation, dft, device scaling, aux loss, metric names), then update TRL_MIRRORED_VERSION "
        "and MIRRORED_SHA256 in tests/test_trl_mirror.py.\n\n" + "\n\n".join(f"[{k}]\n{v}" for k, v in changed.items())
    )
