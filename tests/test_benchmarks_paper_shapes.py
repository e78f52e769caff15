"""The paper-shape benchmark builds the three students at their published sizes (``benchmarks/_common.py``).

Built on the meta device (no memory, ~1 s): if a hand-written config drifted from the published one, the parameter
count — and every figure ``docs/performance.md`` extrapolates from it — would be wrong.
"""

import os
import sys

import pytest


sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from _common import paper_shape_counts  # noqa: E402


@pytest.mark.parametrize(
    ("name", "params", "layers"),
    [
        ("qwen2.5-1.5b", 1_543_714_304, 28),  # Qwen/Qwen2.5-1.5B
        ("llama-3.2-1b", 1_235_814_400, 16),  # meta-llama/Llama-3.2-1B
        ("bloom-1b1", 1_065_314_304, 24),  # bigscience/bloom-1b1
    ],
)
def test_paper_shapes_have_the_published_parameter_counts(name, params, layers):
    counts = paper_shape_counts(name, rank=16, anchor_rank=64)
    assert counts["params"] == params
    assert counts["layers"] == layers
    # one basis per input tensor: q/k/v share one and gate/up another, BLOOM's four linears read four tensors
    per_layer = {"qwen2.5-1.5b": 3 * 1536 + 8960, "llama-3.2-1b": 3 * 2048 + 8192, "bloom-1b1": 3 * 1536 + 6144}
    assert counts["bases_shared"] == 64 * layers * per_layer[name]
    assert counts["bases_per_layer"] >= counts["bases_shared"]
