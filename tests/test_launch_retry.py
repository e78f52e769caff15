"""The distributed tests' launcher retries only gloo's native abort, once, from clean output folders."""

from __future__ import annotations

import sys

import pytest

from testing_utils import GLOO_NATIVE_ABORT, run_distributed


def flaky(marker, message: str) -> list[str]:
    """A launch that fails with ``message`` on stderr the first time (leaving a stale file) and succeeds after."""
    script = (
        "import pathlib, sys\n"
        f"m = pathlib.Path({str(marker)!r})\n"
        "if not m.exists():\n"
        "    m.write_text('1'); (m.parent / 'out' / 'stale').write_text('x')\n"
        f"    sys.stderr.write({message!r}); sys.exit(1)\n"
        "print(sorted(p.name for p in (m.parent / 'out').iterdir()))\n"
    )
    return [sys.executable, "-c", script]


def test_a_native_abort_is_retried_once_from_a_clean_folder(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.warns(UserWarning, match="native abort"):
        res = run_distributed(flaky(tmp_path / "marker", GLOO_NATIVE_ABORT), outputs=(tmp_path / "out",))
    assert res.stdout.strip() == "[]"  # the retry saw an emptied, still existing folder


def test_any_other_failure_fails_at_once(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(AssertionError, match="ValueError: bad"):
        run_distributed(flaky(tmp_path / "marker", "ValueError: bad"), outputs=(tmp_path / "out",))
    assert (tmp_path / "out" / "stale").exists()  # not retried, nothing cleaned


def test_a_repeated_abort_fails(tmp_path):
    script = f"import sys; sys.stderr.write({GLOO_NATIVE_ABORT!r}); sys.exit(1)"
    with pytest.warns(UserWarning), pytest.raises(AssertionError, match="terminate called"):
        run_distributed([sys.executable, "-c", script])
