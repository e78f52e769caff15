"""The examples in the public configs' and the collator's docstrings run as written."""

from __future__ import annotations

import doctest
import inspect

import pytest

import slowed_peft


@pytest.mark.parametrize("name", ["SLowEDConfig", "SLowEDSFTConfig", "EntropyMaskingCollator"])
def test_docstring_example_runs(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # SFTConfig(output_dir="out") stays inside the test's folder
    doc = inspect.getdoc(getattr(slowed_peft, name))
    # doc-builder fences (```py ... ```) are markdown, not expected output
    text = "\n".join(line for line in doc.splitlines() if not line.strip().startswith("```"))
    test = doctest.DocTestParser().get_doctest(text, {}, name, None, 0)
    assert test.examples, f"{name} has no runnable example"
    runner = doctest.DocTestRunner()
    runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
