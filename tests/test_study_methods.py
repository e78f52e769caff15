"""A study's method names (a METHODS entry, optionally with ``lr=<rate>`` for a grid), the low-rank anchored
method's settings, and the paired comparisons a study names (``--comparisons "A vs B"``)."""

from __future__ import annotations

import pytest
from test_anchor_report import INITIAL, _run, _runs

from slowed_peft.scripts.pair_report import comparison_section
from slowed_peft.scripts.study_config import StudyArguments, method_settings, parse_comparison, parse_method


def test_a_method_name_may_end_in_a_learning_rate_for_a_grid():
    assert parse_method("lora r=16") == ("lora r=16", None)
    assert parse_method("sft lr=1e-5") == ("sft lr=1e-5", None)  # a name of its own, not an override
    assert parse_method("lora r=16 lr=1e-3") == ("lora r=16", 1e-3)
    assert parse_method("anchored r=16 lr=3e-3") == ("anchored r=16", 3e-3)
    args = StudyArguments(methods=["corda-kpm lr=1e-3", "anchored r=16 lr=1e-3"])
    assert method_settings(args, "corda-kpm lr=1e-3")["learning_rate"] == 1e-3
    assert method_settings(args, "corda-kpm")["learning_rate"] == 3e-4  # the entry's own rate without the override
    low_rank = method_settings(args, "anchored r=16 lr=1e-3")
    assert (low_rank["arm"], low_rank["slowed_r"], low_rank["learning_rate"]) == ("anchored", 16, 1e-3)


@pytest.mark.parametrize(
    "name, message",
    [
        ("lora r=8", "Unknown method 'lora r=8'"),
        ("lora r=16 lr=fast", "must be a positive number; got 'fast'"),
        ("lora r=16 lr=-1e-3", "must be a positive number; got '-1e-3'"),
        ("nope lr=1e-3", "Unknown method 'nope lr=1e-3'"),
    ],
)
def test_a_bad_method_name_is_refused_naming_it(name, message):
    with pytest.raises(ValueError, match=message):
        StudyArguments(methods=[name])


def test_a_comparison_names_two_methods_that_are_run():
    assert parse_comparison("anchored r=16 vs lora r=16 lr=1e-3") == ("anchored r=16", "lora r=16 lr=1e-3")
    with pytest.raises(ValueError, match="'A vs B'"):
        parse_comparison("anchored against lora r=16")
    with pytest.raises(ValueError, match=r"names \['lora r=16'\], not among the methods run"):
        StudyArguments(methods=["anchored"], comparisons=["anchored vs lora r=16"])


def test_the_low_rank_anchored_method_trains_a_rank_16_anchored_delta():
    from slowed_peft.scripts.arguments import SLowEDArguments, slowed_adapter

    spec = method_settings(StudyArguments(), "anchored r=16")
    config = slowed_adapter(SLowEDArguments(arm=spec["arm"], slowed_r=spec["slowed_r"], anchor_rank=64))
    assert (config.r, config.anchor_rank, config.slow_factor, config.max_drift) == (16, 64, 1.0, None)


def test_paired_comparisons_give_a_row_and_a_verdict_per_pair_and_name_missing_runs():
    runs = {**_runs(), "lora r=16": [_run("lora r=16", 0, [0.7, 0.61, 0.8], [14, 10, 8])]}
    lines = comparison_section(
        runs, INITIAL, 0.45, ["anchored vs lora r=16", "anchored vs sft lr=1e-4", "anchored r=16 vs lora r=16"]
    )
    text = "\n".join(lines)
    assert "| anchored − lora r=16 | 2 / 1 |" in text and "| anchored − sft lr=1e-4 | 2 / 2 |" in text
    # the anchor keeps 17-18 of 20 where LoRA keeps 8-14 at the same learning: above, under the marker judge
    assert "**anchored above lora r=16** at 95% of SFT's learning (marker judge)" in text
    assert "anchored r=16 vs lora r=16: not measured (anchored r=16 not run yet)." in text


def test_a_pair_that_shares_no_level_of_learning_says_how_far_each_got():
    runs = {**_runs(), "corda-kpm": [_run("corda-kpm", 0, [0.9, 0.85, 0.8], [18, 18, 18])]}
    text = "\n".join(comparison_section(runs, INITIAL, 0.45, ["corda-kpm vs sft lr=1e-4"]))
    assert "**corda-kpm vs sft lr=1e-4: no shared level of SFT's learning** — best learning 0.500 vs 1.000" in text
