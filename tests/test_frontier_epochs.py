"""The frontier's checkpoints fall on the trainer's own epoch ends, also for an arm that adds rows (replay)."""

from types import SimpleNamespace

from slowed_peft.scripts.frontier import _epoch_callback


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, bool, float]] = []

    def __call__(self, model, step: int, final: bool = False, epoch: float | None = None) -> dict:
        self.calls.append((step, final, epoch))
        return {"step": step, "cot_nll": 0.0, "refusal_ratio": 1.0, "harmful_kl": 0.0, "eval_seconds": 0.0}


def _checkpoints(max_steps: int, epochs: int) -> list[tuple[int, bool, float]]:
    recorder = _Recorder()
    callback = _epoch_callback(recorder)
    for step in range(1, max_steps + 1):
        state = SimpleNamespace(global_step=step, max_steps=max_steps)
        callback.on_step_end(SimpleNamespace(num_train_epochs=epochs), state, None, model=object())
    return recorder.calls


def test_checkpoints_at_each_epoch_end_and_the_last_step_is_final():
    assert _checkpoints(24, 3) == [(8, False, 1.0), (16, False, 2.0), (24, True, 3.0)]


def test_replay_rows_lengthen_the_epoch_and_the_checkpoints_follow():
    # 32 rationales + 2 replay rows at batch 4: 9 steps per epoch, not the study's 8
    assert _checkpoints(27, 3) == [(9, False, 1.0), (18, False, 2.0), (27, True, 3.0)]
