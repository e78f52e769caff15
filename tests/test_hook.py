"""The start-up hook (``slowed_peft_hook.pth`` + ``_slowed_peft_hook``): fresh interpreters that never import
``slowed_peft`` load SLOWED adapters through ``PeftModel`` and ``AutoPeftModelForCausalLM``; start-up stays light;
``SLOWED_PEFT_NO_HOOK=1`` turns it off; the wheel ships the ``.pth`` at its root."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from peft import get_peft_model

from slowed_peft import SLowEDConfig

from testing_utils import batch, build_char_tokenizer, build_tiny, wheel_build_lock


REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "peft", "transformers", "slowed_peft", "trl", "datasets")


def save_tiny_adapter(root: Path, r=4) -> tuple[str, str]:
    """A tiny Llama (+ char tokenizer) and a non-trivial SLOWED adapter on it; returns (base dir, adapter dir) and
    writes ``expected.pt`` (a batch and the adapter's logits on it) into ``root``."""
    base, adapter = root / "base", root / "adapter"
    model = build_tiny("llama", base)
    build_char_tokenizer(base)
    cfg = SLowEDConfig(target_modules="all-linear", r=r, init_weights=False, max_drift=0.2, task_type="CAUSAL_LM")
    pm = get_peft_model(model, cfg)
    pm.save_pretrained(adapter)
    x = batch()
    with torch.no_grad():
        torch.save({"x": x, "logits": pm(x).logits}, root / "expected.pt")
    return str(base), str(adapter)


def fresh(code: str, env_extra: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SLOWED_PEFT_NO_HOOK"}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_pth_is_installed_in_this_environment():
    pth = Path(sysconfig.get_paths()["purelib"]) / "slowed_peft_hook.pth"
    assert pth.is_file(), "reinstall the package (pip install -e .) to get the start-up hook"
    assert pth.read_text() == (REPO / "slowed_peft_hook.pth").read_text()
    assert pth.read_text().startswith("import ") and len(pth.read_text().splitlines()) == 1


def test_startup_imports_nothing_heavy_and_watches_peft():
    res = fresh(
        f"""
        import sys
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
        print([type(f).__name__ for f in sys.meta_path])
        """
    )
    assert res.returncode == 0, res.stderr
    loaded, finders = res.stdout.splitlines()
    assert loaded == "[]"
    assert "_PeftImportWatcher" in finders


def test_peft_loaders_work_without_importing_slowed_peft(tmp_path):
    base, adapter = save_tiny_adapter(tmp_path)
    code = f"""
        import sys, torch
        from transformers import AutoModelForCausalLM
        from peft import AutoPeftModelForCausalLM, PeftModel
        assert "slowed_peft" in sys.modules  # registered by the hook, not by this script
        ref = torch.load({str(tmp_path / "expected.pt")!r})
        a = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({base!r}), {adapter!r})
        b = AutoPeftModelForCausalLM.from_pretrained({adapter!r})
        with torch.no_grad():
            for m in (a, b):
                assert m.peft_config["default"].peft_type == "SLOWED"
                torch.testing.assert_close(m(ref["x"]).logits, ref["logits"], atol=1e-6, rtol=0)
        print("OK")
        """
    ok = fresh(code)
    assert ok.returncode == 0 and ok.stdout.strip() == "OK", ok.stderr[-3000:]
    off = fresh(code, {"SLOWED_PEFT_NO_HOOK": "1"})
    assert off.returncode != 0 and ("KeyError: 'SLOWED'" in off.stderr or "AssertionError" in off.stderr)


def test_disabled_hook_leaves_peft_untouched():
    res = fresh(
        """
        import sys, peft
        print("slowed_peft" in sys.modules, "SLOWED" in peft.PeftType.__members__)
        """,
        {"SLOWED_PEFT_NO_HOOK": "1"},
    )
    assert res.returncode == 0 and res.stdout.strip() == "False False", res.stderr


def test_hook_is_harmless_when_slowed_peft_is_imported_first():
    res = fresh(
        """
        import slowed_peft, peft
        from peft.utils.peft_types import PeftType
        print(slowed_peft.register_slowed() is PeftType.SLOWED, list(PeftType).count(PeftType.SLOWED))
        """
    )
    assert res.returncode == 0 and res.stdout.strip() == "True 1", res.stderr


def test_find_spec_probe_does_not_consume_the_hook():
    """transformers probes ``importlib.util.find_spec("peft")`` before anything imports peft."""
    res = fresh(
        """
        import importlib.util, sys
        assert importlib.util.find_spec("peft") is not None
        import peft
        print("slowed_peft" in sys.modules, "SLOWED" in peft.PeftType.__members__)
        """
    )
    assert res.returncode == 0 and res.stdout.strip() == "True True", res.stderr


def test_wheel_ships_the_pth_at_its_root(tmp_path):
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    with wheel_build_lock():
        res = subprocess.run([*pip, str(REPO)], capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        pytest.skip(f"could not build a wheel here: {res.stderr[-500:]}")
    (wheel,) = tmp_path.glob("slowed_peft-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "slowed_peft_hook.pth" in names and "_slowed_peft_hook.py" in names
    assert "slowed_peft/lm_eval_tasks/slowed_gsm8k.yaml" in names


# ---------------------------------------------------- a half-removed install and a failing import do not break peft


def bare_python(code: str, cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """A fresh interpreter without the site-packages start-up (``-S``), run in ``cwd``: the test decides what is on
    ``sys.path`` and which ``.pth`` files are processed."""
    env = {k: v for k, v in os.environ.items() if k not in ("SLOWED_PEFT_NO_HOOK", "PYTHONPATH")}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-S", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=cwd,
    )


def test_pth_is_silent_when_the_hook_module_is_gone(tmp_path):
    """A half-removed install (the ``.pth`` left, ``_slowed_peft_hook`` deleted) prints nothing at start-up."""
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / "slowed_peft_hook.pth").write_text((REPO / "slowed_peft_hook.pth").read_text())
    res = bare_python(
        f"""
        import site, sys
        site.addsitedir({str(site_dir)!r})  # processes the .pth as interpreter start-up does
        print("hook" if any(type(f).__name__ == "_PeftImportWatcher" for f in sys.meta_path) else "no hook")
        """,
        cwd=tmp_path,
    )
    assert res.returncode == 0 and res.stdout.strip() == "no hook"
    assert res.stderr == "", res.stderr
    # with the module present, the same line installs the watcher
    (site_dir / "_slowed_peft_hook.py").write_text((REPO / "_slowed_peft_hook.py").read_text())
    res = bare_python(
        f"""
        import site, sys
        site.addsitedir({str(site_dir)!r})
        print("hook" if any(type(f).__name__ == "_PeftImportWatcher" for f in sys.meta_path) else "no hook")
        """,
        cwd=tmp_path,
    )
    assert res.returncode == 0 and res.stdout.strip() == "hook" and res.stderr == "", res.stderr


@pytest.mark.parametrize("raised", ["SystemExit(3)", "ImportError('boom')", "BaseException('odd')", "RecursionError()"])
def test_import_peft_survives_anything_slowed_peft_raises_at_import(tmp_path, raised):
    fake = tmp_path / "fake"
    (fake / "slowed_peft").mkdir(parents=True)
    (fake / "slowed_peft" / "__init__.py").write_text(f"raise {raised}\n")
    (fake / "_slowed_peft_hook.py").write_text((REPO / "_slowed_peft_hook.py").read_text())
    purelib = sysconfig.get_paths()["purelib"]
    res = bare_python(
        f"""
        import sys, warnings
        sys.path[:0] = [{str(fake)!r}]
        sys.path.append({purelib!r})  # peft and its dependencies, without the installed hook or slowed_peft
        import _slowed_peft_hook
        _slowed_peft_hook.install()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import peft
            _slowed_peft_hook.install()  # again (peft imported, slowed_peft not): no second warning
        mine = [str(w.message) for w in caught if "slowed-peft" in str(w.message)]
        print(len(mine), mine[0] if mine else "", "peft" in sys.modules)
        """,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    count, _, rest = res.stdout.strip().partition(" ")
    assert count == "1" and rest.endswith("True")
    assert raised.split("(")[0] in rest
