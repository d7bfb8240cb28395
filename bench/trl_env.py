"""TRL's own virtualenv, shared by ``bench/train_step.py`` and the TRL-equality tests.

TRL runs in a separate venv so it can never change the project's packages; scripts and tests talk to it through a
subprocess. ``torch`` is pinned to the wheel on local disk (any other version would download gigabytes) and
``transformers`` to the project's major line; ``trl`` itself resolves to the newest release the registry offers.

``ensure_trl_venv(with_envs=True)`` also installs what ``amrsd_envs`` needs at run time
(``ENV_REQUIREMENTS``, the first block of ``pyproject.toml``'s dependencies) into the same venv, once, so code run
there with the repository on ``PYTHONPATH`` can ``import amrsd_envs`` (the TRL adapter test,
``tests/test_adapter_trl.py``). The repository itself is never installed into the venv.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TRL_VENV = REPO / "bench" / ".venv-trl"
TRL_REQUIREMENTS = ("torch==2.13.0", "transformers<5.20", "trl")
ENV_REQUIREMENTS = ("gymnasium>=1.0,<2", "pydantic>=2.6,<3", "pyyaml>=6", "sympy>=1.12", "math-verify>=0.7",
                    "pint>=0.23", "httpx>=0.27", "numpy>=1.24", "tqdm>=4.66", "rich>=13", "datasets")
"""What ``import amrsd_envs`` (and the TRL adapter's dataset helper) needs; see ``ensure_trl_venv(with_envs=True)``."""
_ENV_MODULES = "gymnasium, pydantic, yaml, sympy, math_verify, pint, httpx, numpy, tqdm, rich, datasets"

__all__ = ["DEFAULT_TRL_VENV", "ENV_REQUIREMENTS", "TRL_REQUIREMENTS", "ensure_trl_venv"]


def _create(venv: Path, python: Path) -> None:
    print(f"creating {venv} with {' '.join(TRL_REQUIREMENTS)} (once; a few minutes) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    try:
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *TRL_REQUIREMENTS], check=True)
    except subprocess.CalledProcessError:
        shutil.rmtree(venv, ignore_errors=True)  # a half-built venv would otherwise be mistaken for a ready one
        raise


def _add_env_requirements(python: Path) -> None:
    """Install ``ENV_REQUIREMENTS`` into the venv when one of them is missing (torch stays pinned)."""
    probe = subprocess.run([str(python), "-c", f"import {_ENV_MODULES}"], capture_output=True, text=True)
    if probe.returncode == 0:
        return
    print(f"adding amrsd_envs' requirements to {python.parent.parent} (once) ...", flush=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "torch==2.13.0", *ENV_REQUIREMENTS], check=True)


def ensure_trl_venv(venv: Path = DEFAULT_TRL_VENV, *, with_envs: bool = False) -> Path:
    """The TRL venv's python, creating the venv (pinned torch, see ``TRL_REQUIREMENTS``) when it is missing.

    ``with_envs=True`` also makes sure ``ENV_REQUIREMENTS`` are installed (so ``amrsd_envs`` imports there when the
    repository is on ``PYTHONPATH``)."""
    python = venv / "bin" / "python"
    if not python.exists():
        _create(venv, python)
    probe = subprocess.run(
        [str(python), "-c", "import torch, trl, transformers; print(torch.__version__, trl.__version__, "
         "transformers.__version__)"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise RuntimeError(f"{python} cannot import torch/trl/transformers; delete {venv} to rebuild it:\n"
                           f"{probe.stderr[-2000:]}")
    torch_version = probe.stdout.split()[0]
    if not torch_version.startswith("2.13.0"):
        raise RuntimeError(f"{venv} has torch {torch_version}, not 2.13.0; delete the folder so it is rebuilt "
                           "with the pinned torch")
    if with_envs:
        _add_env_requirements(python)
    return python
