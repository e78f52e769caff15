"""The study's checkpoints fall on the trainer's own epoch ends (also for an arm that adds rows: replay), or every
``eval_steps`` steps; the slow parts run where the schedule says."""

from types import SimpleNamespace

import pytest

from slowed_peft.eval.checkpoints import CheckpointEvalCallback


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.initial_responses = ["x"]

    def __call__(self, model, step: int, reasoning=True, benign=True, kl=True, epoch=None) -> dict:
        self.calls.append((step, reasoning, benign, kl, epoch))
        return {"step": step, "epoch": epoch, "cot_nll": 0.0, "refusal_ratio": 1.0, "eval_seconds": 0.0}


def _checkpoints(max_steps: int, epochs: int = 1, trainer_max_steps: int = -1, **kw) -> list[tuple]:
    recorder = _Recorder()
    callback = CheckpointEvalCallback(recorder, log=None, **kw)
    args = SimpleNamespace(num_train_epochs=epochs, max_steps=trainer_max_steps)
    callback.on_train_begin(args, SimpleNamespace(global_step=0, max_steps=max_steps, epoch=0.0), None, model=object())
    for step in range(1, max_steps + 1):
        state = SimpleNamespace(global_step=step, max_steps=max_steps, epoch=step / max_steps * epochs)
        callback.on_step_end(args, state, None, model=object())
    return recorder.calls


STUDY = dict(reasoning_every=None, at_start=False)  # how the study engine schedules them


def test_checkpoints_at_each_epoch_end_and_the_last_step_is_final():
    assert _checkpoints(24, 3, **STUDY) == [
        (8, False, True, True, 1.0), (16, False, True, True, 2.0), (24, True, True, True, 3.0)
    ]  # fmt: skip


def test_replay_rows_lengthen_the_epoch_and_the_checkpoints_follow():
    # 32 rationales + 2 replay rows at batch 4: 9 steps per epoch, not the study's 8
    assert [c[0] for c in _checkpoints(27, 3, **STUDY)] == [9, 18, 27]


def test_step_schedule_with_light_checkpoints_between_full_ones():
    # the demo: every step, harmful KL and false refusals at the end only (full_every=None)
    calls = _checkpoints(4, trainer_max_steps=4, eval_steps=1, benign_every=None, kl_every=None, **STUDY)
    assert [(c[0], c[2], c[3]) for c in calls] == [(1, False, False), (2, False, False), (3, False, False),
                                                  (4, True, True)]  # fmt: skip
    # the replication: every 8 steps, the slow parts every checkpoint; greedy answers at the end only
    calls = _checkpoints(24, trainer_max_steps=24, eval_steps=8, **STUDY)
    assert [(c[0], c[1], c[2]) for c in calls] == [(8, False, True), (16, False, True), (24, True, True)]
    with pytest.raises(ValueError, match="kl_every must be an integer >= 1 or None, got 0"):
        CheckpointEvalCallback(_Recorder(), kl_every=0)


def test_records_given_before_training_make_the_next_checkpoint_a_later_one():
    # the old replication's pattern: the start is prepended, at_start stays True; step 8 is then a light checkpoint
    recorder = _Recorder()
    callback = CheckpointEvalCallback(recorder, eval_steps=8, reasoning_every=4, benign_every=4, kl_every=4, log=None)
    callback.records.append({"step": 0})
    args = SimpleNamespace(num_train_epochs=1, max_steps=24)
    callback.on_train_begin(args, SimpleNamespace(global_step=0, max_steps=24, epoch=0.0), None, model=object())
    for step in range(1, 25):
        state = SimpleNamespace(global_step=step, max_steps=24, epoch=step / 200)  # 24 of 800 rows: 0.12 epochs
        callback.on_step_end(args, state, None, model=object())
    assert [c[:4] for c in recorder.calls] == [
        (8, False, False, False),
        (16, False, False, False),
        (24, True, True, True),
    ]
    assert recorder.calls[-1][4] == 0.12


def test_a_step_budget_longer_than_an_epoch_checkpoints_at_each_epoch_end():
    recorder = _Recorder()
    callback = CheckpointEvalCallback(recorder, reasoning_every=None, at_start=False, log=None)
    args = SimpleNamespace(num_train_epochs=3.0, max_steps=600)  # the trainer's num_train_epochs is ignored then
    for step in range(1, 601):
        state = SimpleNamespace(global_step=step, max_steps=600, epoch=step / 200, num_train_epochs=3)
        callback.on_step_end(args, state, None, model=object())
    assert [(c[0], c[4]) for c in recorder.calls] == [(200, 1.0), (400, 2.0), (600, 3.0)]
