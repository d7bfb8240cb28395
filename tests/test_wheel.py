"""The project installs like a library: the built wheel carries every module and the whole task suite, and in a
fresh venv without torch the envs, the oracle, ``amrsd-tasks validate`` and the trainer's install hint work from a
folder outside the repository (so the source tree cannot stand in for the installed package).

The fresh venvs get the light runtime dependencies from one cached venv (built once per machine from PyPI, in the
temp dir, keyed by the wheel's requirements) through a ``.pth`` file, together with the data-only packages that
``scripts/setup.sh`` installs ``--no-deps`` (``bfcl-eval``: the BFCL families read its data files); the wheel itself
installs with ``--no-index``, so a heavy requirement sneaking into the default install fails here instead of
downloading torch.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
TRAIN_ONLY = ("torch", "transformers", "accelerate", "gguf", "matplotlib", "safetensors", "tokenizers")
SOURCE_DIRS = {"amrsd_envs": "amrsd_envs", "amrsd_train": "amrsd_train", "tasks": "amrsd_tasks"}  # repo dir: wheel dir
CAPS = ("<", "<=", "==", "===", "~=")  # specifier operators that put a ceiling on a version
EVAL_TASKS = 8  # oracle episodes per env id (round-robin over its families)
# Installed --no-deps beside the light dependencies, as scripts/setup.sh does: packages whose data files a reader
# needs but whose own dependencies the project never imports (amrsd_envs.datasets.bfcl.INSTALL_HINT names the pin).
DATA_ONLY = ("bfcl-eval==2026.3.23",)


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise AssertionError(
            f"{cmd} exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    return proc


def _source_files(top: Path) -> list[Path]:
    return sorted(p for p in top.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


@functools.cache
def built_wheel() -> Path:
    """The wheel, built once per session from a copy of the sources (no build/ or egg-info left in the checkout)."""
    work = Path(tempfile.mkdtemp(prefix="amrsd-wheel-"))
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in SOURCE_DIRS:
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
          "--no-build-isolation", "-w", str(work / "dist"), str(src)])
    (wheel,) = (work / "dist").glob("amrsd-*.whl")
    return wheel


def _requirements(wheel: Path) -> tuple[list[str], list[str]]:
    """(default requirements, requirements of the `train` extra) from the wheel's METADATA."""
    with zipfile.ZipFile(wheel) as z:
        meta = Parser().parsestr(z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode())
    reqs = meta.get_all("Requires-Dist") or []
    return [r for r in reqs if "extra ==" not in r], [r for r in reqs if 'extra == "train"' in r]


def _light_deps_site(wheel: Path) -> Path:
    """site-packages of a venv holding exactly the wheel's default requirements; built once per machine."""
    reqs = sorted(_requirements(wheel)[0])
    key = hashlib.sha256(json.dumps([sys.version, reqs, DATA_ONLY]).encode()).hexdigest()[:12]
    base = Path(tempfile.gettempdir()) / f"amrsd-test-light-deps-{key}"
    with open(f"{base}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be building it right now
        if not (base / "complete").exists():
            shutil.rmtree(base, ignore_errors=True)
            _run([sys.executable, "-m", "venv", str(base)])
            _run([str(base / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", *reqs])
            _run([str(base / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                  "--no-deps", *DATA_ONLY])
            (base / "complete").write_text("\n".join([*reqs, *DATA_ONLY]) + "\n")
    return Path(_run([str(base / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
                .stdout.strip())


def light_venv(dest: Path, *wheels: Path) -> Path:
    """A new venv at ``dest`` (no torch) with ``wheels`` installed offline on top of the light dependencies.

    Returns its ``bin`` folder. Dependencies the wheels need beyond the light ones make the install fail."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(dest)])
    python = dest / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    (site / "_amrsd_light_deps.pth").write_text(f"{_light_deps_site(built_wheel())}\n")
    links = sorted({str(w.parent) for w in wheels})
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--disable-pip-version-check",
          "--no-index", *(a for d in links for a in ("--find-links", d)), *map(str, wheels)])
    return dest / "bin"


def clean_env(bin_dir: Path) -> dict[str, str]:
    """The environment for commands in a light venv: its bin first, no variable pointing back into the repo."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "AMRSD_TASKS", "AMRSD_TASK_DATA", "PYTHONHOME")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(bin_dir.parent)
    return env


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    return light_venv(tmp_path_factory.mktemp("wheel-venv") / "venv", built_wheel())


def test_data_only_pins_match_the_readers():
    """The bfcl-eval pin installed here is the one the BFCL reader asks for (and scripts/setup.sh installs)."""
    from amrsd_envs.datasets.bfcl import INSTALL_HINT

    assert INSTALL_HINT.split()[-1] in DATA_ONLY
    assert f'"{INSTALL_HINT.split()[-1]}"' in (REPO / "scripts" / "setup.sh").read_text()


def test_pyproject_lists_every_package():
    """The package list is explicit (tasks/ installs as amrsd_tasks); a new subpackage must join it."""
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {
        ".".join(init.parent.relative_to(REPO).parts) for top in ("amrsd_envs", "amrsd_train")
        for init in (REPO / top).rglob("__init__.py") if "__pycache__" not in init.parts
    }
    assert found - listed == set(), f"add to [tool.setuptools] packages in pyproject.toml: {sorted(found - listed)}"
    assert config["package-dir"] == {"amrsd_tasks": "tasks"} and "amrsd_tasks" in listed


@pytest.mark.slow
def test_wheel_holds_every_module_and_the_whole_task_suite():
    wheel = built_wheel()
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    expected = {f"{SOURCE_DIRS[top]}/{p.relative_to(REPO / top).as_posix()}"
                for top in SOURCE_DIRS for p in _source_files(REPO / top)}
    missing = sorted(expected - names)
    assert not missing, f"source files missing from the wheel (pyproject packages / package-data?): {missing}"
    assert any(n.startswith("amrsd_tasks/data/") and n.endswith(".json") for n in names)
    assert sum(n.startswith("amrsd_tasks/") and n.endswith(".yaml") for n in names) >= 30
    # the main job's warm start, so an installed package skips the build too
    assert any(n.startswith("amrsd_train/warm_starts/tiny-") and n.endswith("/model.safetensors") for n in names)
    tops = {n.split("/")[0] for n in names}
    assert tops == {*SOURCE_DIRS.values(), wheel.name.split("-py")[0] + ".dist-info"}, tops


@pytest.mark.slow
def test_default_install_has_no_trainer_dependencies():
    default, train = (list(map(Requirement, reqs)) for reqs in _requirements(built_wheel()))
    assert not {r.name.lower() for r in default} & set(TRAIN_ONLY)
    assert {"torch", "transformers"} <= {r.name for r in train}
    # the package states compatibility bounds only; this machine's torch pin lives in scripts/setup.sh
    capped = [r for r in default + train if r.name == "torch" and any(s.operator in CAPS for s in r.specifier)]
    assert not capped, capped


@pytest.mark.slow
def test_fresh_venv_without_torch_runs_envs_oracle_and_validate(venv, tmp_path):
    env = clean_env(venv)
    python = str(venv / "python")
    cwd = tmp_path  # outside the repository
    assert not cwd.resolve().is_relative_to(REPO)

    no_torch = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True, env=env, cwd=cwd)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr

    script = """
import json, sys
import gymnasium as gym
import amrsd_envs, amrsd_tasks
from amrsd_envs import ENV_IDS
from amrsd_envs.catalog import builtin_tasks_dir, load_tasks
from amrsd_envs.evaluate import evaluate

env = gym.make("AMRSD-ToolUse-v0")
messages, info = env.reset(seed=0)
env.close()
catalog = load_tasks()
scores = {}
for env_id in ENV_IDS:
    report = evaluate(env_id, "oracle", n_tasks=%d, env_kwargs={"tasks": catalog}, progress=False)
    scores[env_id] = [report.pass_at_1, report.n_tasks]
print(json.dumps({"files": [amrsd_envs.__file__, amrsd_tasks.__file__], "tasks_dir": str(builtin_tasks_dir()),
                  "first_role": messages[-1]["role"], "families": len(catalog), "scores": scores,
                  "torch_loaded": "torch" in sys.modules}))
""" % EVAL_TASKS
    out = json.loads(_run([python, "-c", script], env=env, cwd=cwd).stdout.strip().splitlines()[-1])
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], env=env).stdout.strip())
    for f in [*out["files"], out["tasks_dir"]]:
        assert Path(f).is_relative_to(site), f"{f} is not the installed copy (under {site})"
    assert out["first_role"] == "user" and not out["torch_loaded"]
    assert out["families"] == len([p for p in (REPO / "tasks").rglob("*") if p.suffix in (".yaml", ".yml")])
    assert out["scores"] == {e: [1.0, EVAL_TASKS] for e in out["scores"]}, out["scores"]
    assert "AMRSD-BFCL-v0" in out["scores"]  # the BFCL families, read from bfcl-eval's installed data

    report = cwd / "report.json"
    _run(["amrsd-eval", "--env", "AMRSD-ToolUse-v0", "--policy", "oracle", "--n-tasks", "3", "--out", str(report)],
         env=env, cwd=cwd)
    assert json.loads(report.read_text())["pass_at_1"] == 1.0

    valid = _run(["amrsd-tasks", "validate", out["tasks_dir"]], env=env, cwd=cwd)
    assert f"{out['families']} valid families, 0 problem(s)" in valid.stdout

    train = subprocess.run(["amrsd-train", "--config", "x.yaml"], capture_output=True, text=True, env=env, cwd=cwd)
    assert train.returncode == 2 and 'pip install "amrsd[train]"' in train.stderr, train.stderr
