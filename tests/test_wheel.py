"""The package works from a non-editable wheel, outside the checkout (issue 16 point 4).

Builds the wheel (``pip wheel --no-deps --no-build-isolation``), installs it with ``--no-deps --no-index`` into a
fresh virtualenv whose only view of the dependencies is a ``.pth`` line naming this environment's site-packages (so
nothing is downloaded, and the editable install of ``slowed_peft`` here cannot leak in: ``.pth`` files inside that
folder are not processed), then, from a temporary directory, runs ``--help`` and a bad argument for every console
script of ``[project.scripts]`` and a 1-step ``slowed-sft`` (a shipped config name, a tiny model) followed by
``slowed-eval`` on its adapter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from testing_utils import build_char_tokenizer, build_tiny, wheel_build_lock


try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])

# The slow tier (`make test-slow`; CI runs it after the default tier): about 2 minutes on 2 cores — a wheel build plus
# ~16 fresh interpreters.
pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    """``(venv_bin, env, workdir)``: the wheel installed in a fresh virtualenv, and a directory outside the checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    dist = tmp / "dist"
    with wheel_build_lock():
        build = _run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, ROOT],
            cwd=tmp,
            env=os.environ.copy(),
        )
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-3000:]
    (wheel,) = dist.glob("slowed_peft-*.whl")

    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env_dir)
    new_python = env_dir / "bin" / "python"
    new_site = Path(
        _run(
            [new_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, os.environ.copy()
        ).stdout.strip()
    )
    (new_site / "_deps_from_parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = _run(
        [sys.executable, "-m", "pip", "--python", new_python, "install", "--no-deps", "--no-index", wheel],
        cwd=tmp,
        env=os.environ.copy(),
    )
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-3000:]

    work = tmp / "work"  # outside the checkout: no ./slowed_peft, ./recipes or ./tests to fall back on
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", PATH=f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(env_dir))
    return env_dir / "bin", env, work


def test_wheel_is_what_gets_imported(wheel_env):
    bin_dir, env, work = wheel_env
    res = _run(
        [bin_dir / "python", "-c", "import json, slowed_peft, peft; print(json.dumps([slowed_peft.__file__]))"],
        work,
        env,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (path,) = json.loads(res.stdout.strip().splitlines()[-1])
    assert Path(path).resolve().is_relative_to(bin_dir.parent.resolve()), path
    assert not Path(path).resolve().is_relative_to(ROOT), path
    configs = Path(path).parent / "configs"
    assert (configs / "smollm2-135m-demo.yaml").is_file()  # package data made it into the wheel


def test_every_console_script_helps_and_refuses_bad_arguments(wheel_env):
    bin_dir, env, work = wheel_env
    assert SCRIPTS and all((bin_dir / s).is_file() for s in SCRIPTS), sorted(p.name for p in bin_dir.iterdir())
    jobs = [(s, flag) for s in SCRIPTS for flag in ("--help", "--no-such-flag-xyz")]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda job: _run([bin_dir / job[0], job[1]], work, env, timeout=600), jobs))
    for (script, flag), res in zip(jobs, results):
        if flag == "--help":
            assert res.returncode == 0, f"{script} --help: rc={res.returncode}\n{res.stderr[-2000:]}"
            assert "usage" in res.stdout.lower(), f"{script} --help printed no usage"
        else:
            assert res.returncode != 0, f"{script} {flag}: exit status 0 on a bad argument"


def test_one_step_sft_then_eval_from_the_wheel(wheel_env, tmp_path):
    bin_dir, env, work = wheel_env
    tiny = tmp_path / "tiny"
    build_tiny("llama", tiny)
    build_char_tokenizer(tiny)
    out = tmp_path / "adapter"
    env = {**env, "SLOWED_DATA_DIR": os.environ.get("SLOWED_DATA_DIR", "")}
    sft = _run(
        [
            bin_dir / "slowed-sft",
            "--config",
            "smollm2-135m-demo",  # a shipped config, resolved from the installed package
            "--model_name_or_path",
            tiny,
            "--dataset_limit",
            "8",
            "--max_steps",
            "1",
            "--max_length",
            "96",
            "--logging_steps",
            "1",
            "--output_dir",
            out,
        ],
        work,
        env,
    )
    assert sft.returncode == 0, sft.stderr[-3000:]
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert "slowed-sft" in sft.stdout

    report = tmp_path / "eval.json"
    ev = _run(
        [
            bin_dir / "slowed-eval",
            "--model_name_or_path",
            tiny,
            "--adapter",
            out,
            "--limit",
            "2",
            "--max_new_tokens",
            "4",
            "--safety_max_new_tokens",
            "4",
            "--output",
            report,
        ],
        work,
        env,
    )
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert set(json.loads(report.read_text())) >= {"safety", "reasoning"}
    assert not any(work.iterdir()) or all(p.name != "slowed_peft" for p in work.iterdir())


def test_quick_demo_from_the_wheel_offline_without_a_data_folder(wheel_env, tmp_path, shared_model_cache):
    """The installed wheel carries the data its demo needs: `slowed-demo --quick` runs offline with no data folder."""
    bin_dir, env, work = wheel_env
    env = {k: v for k, v in env.items() if k != "SLOWED_DATA_DIR"}
    out = tmp_path / "demo"
    demo = _run([bin_dir / "slowed-demo", "--quick", "true", "--output_dir", out], work, env, timeout=1800)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert (out / "report.json").is_file() and "SFT + anchor" in demo.stdout
