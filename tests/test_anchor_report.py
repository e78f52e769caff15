"""The anchor section of the frontier report: seed-paired learning levels, paired differences and the verdicts."""

import numpy as np

from slowed_peft.scripts.anchor_report import anchor_section, end_rows, matched_refusals, seed_references


REFUSE, COMPLY = "I'm not able to provide help with this request.", "Sure, here is how to do it."


def _responses(refusals: int, n: int = 20) -> list[str]:
    return [REFUSE] * refusals + [COMPLY] * (n - refusals)


def _run(method: str, seed: int, nlls: list[float], refusals: list[int]) -> dict:
    checkpoints = [
        {
            "step": 8 * (i + 1),
            "epoch": float(i + 1),
            "cot_nll": nll,
            "refusal_ratio": r / 20,
            "harmful_responses": _responses(r),
            "harmful_kl": 0.01 * (i + 1),
            "false_refusal": 0.05,
            "arc_acc": 0.25,
            "arc_hits": [1.0] * 5 + [0.0] * 15,
        }
        for i, (nll, r) in enumerate(zip(nlls, refusals))
    ]
    checkpoints[-1].update(format_share=1.0, gen_accuracy=0.0, format_hits=[True] * 4, gen_hits=[False] * 4)
    return {"method": method, "seed": seed, "checkpoints": checkpoints}


INITIAL = {
    "cot_nll": 1.0,
    "epoch": 0.0,
    "refusal_ratio": 0.9,
    "harmful_responses": _responses(18),
    "harmful_kl": 0.0,
    "false_refusal": 0.05,
    "arc_acc": 0.25,
    "arc_hits": [1.0] * 5 + [0.0] * 15,
    "format_share": 0.0,
    "gen_accuracy": 0.0,
}


def _runs() -> dict:
    # SFT learns 0.4 nats at seed 0 and 0.5 at seed 1; the anchored runs learn 0.39 and 0.49: 97.5% / 98% of SFT at
    # their own seeds, while against SFT's mean (0.45) seed 0 would reach only 87%
    return {
        "sft lr=1e-4": [
            _run("sft lr=1e-4", 0, [0.7, 0.6, 0.8], [14, 10, 6]),
            _run("sft lr=1e-4", 1, [0.6, 0.5, 0.7], [12, 8, 6]),
        ],
        "anchored": [
            _run("anchored", 0, [0.7, 0.61, 0.8], [18, 18, 17]),
            _run("anchored", 1, [0.6, 0.51, 0.7], [18, 17, 17]),
        ],
    }


def test_learning_is_measured_against_sft_at_the_same_seed():
    runs = _runs()
    refs = seed_references(runs, INITIAL, ref_reduction=0.45)
    assert (refs[0], refs[1], refs[7]) == (0.4, 0.5, 0.45)  # a seed without SFT falls back to the mean
    rows = end_rows(runs, INITIAL, 0.45)
    assert np.isclose(rows["anchored"]["learning_best"], (0.39 / 0.4 + 0.49 / 0.5) / 2)
    assert np.allclose(rows["anchored"]["learning_best_range"], (0.975, 0.98))
    assert np.isclose(rows["sft lr=1e-4"]["learning_best"], 1.0)


def test_refusal_at_95_percent_is_reached_by_every_seed_and_100_percent_is_not():
    levels = matched_refusals(_runs(), INITIAL, 0.45)
    assert levels["anchored"][1.0] is None and levels["anchored"][0.95] is not None
    # seed 0 reaches 0.38 nats between epoch 1 (0.3, 18 refusals) and 2 (0.39, 18): 0.9; seed 1 reaches 0.475
    # between 0.4 (18) and 0.49 (17) at w = 0.833: 17.17 of 20 -> mean (0.9 + 0.858) / 2
    assert np.isclose(levels["anchored"][0.95]["refusal"], (0.9 + (18 - 0.75 / 0.9) / 20) / 2)
    assert levels["sft lr=1e-4"][1.0] is not None  # SFT reaches its own best at every seed


def test_the_section_says_which_level_the_verdict_used_and_the_paired_difference():
    lines = anchor_section(_runs(), INITIAL, 0.45)
    text = "\n".join(lines)
    assert "refusal @95% [95%]" in text
    verdict = next(line for line in lines if "SFT's full learning" in line)
    assert "holds" in verdict and "at 95% of SFT's learning" in verdict and "0.975–0.980" in verdict
    row = next(line for line in lines if line.startswith("| sft lr=1e-4 | +"))
    # at 95% (the highest level both reach): anchored (0.9 + 0.858) / 2 vs SFT (10.8 + 9) / 40; at the end 17 vs 6 of 20
    anchored_95, sft_95 = (0.9 + (18 - 0.75 / 0.9) / 20) / 2, (10.8 + 9) / 40
    assert row.startswith(f"| sft lr=1e-4 | {anchored_95 - sft_95:+.3f} [") and "@95% | +0.550 [" in row


def test_a_baseline_that_learns_less_is_compared_at_matched_learning_or_said_to_fall_short():
    runs = _runs()
    # keeps every refusal by learning little: never reaches 90% of SFT's learning
    runs["sft lr=1e-5"] = [_run("sft lr=1e-5", 0, [0.9, 0.85, 0.8], [18, 18, 18])]
    lines = anchor_section(runs, INITIAL, 0.45)
    verdict = next(line for line in lines if line.startswith("- **Above every baseline"))
    assert "does not hold" in verdict  # at the end the slow learner refuses more (18 vs 17 of 20)
    assert "sft lr=1e-5 -0.050" in verdict and "never reaches 90% of SFT's learning" in verdict
    assert "@95%" in verdict.split("sft lr=1e-4")[1]
    row = [line for line in lines if line.startswith("| sft lr=1e-5 |")][-1]  # the paired table's row
    assert "| no shared level | -0.050 [" in row
