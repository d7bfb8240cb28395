"""TRL's own virtualenv, shared by ``bench/train_step.py`` and the TRL-equality tests.

TRL runs in a separate venv so it can never change the project's packages; scripts and tests talk to it through a
subprocess. ``torch`` is pinned to the wheel on local disk (any other version would download gigabytes) and
``transformers`` to the project's major line; ``trl`` itself resolves to the newest release the registry offers.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TRL_VENV = REPO / "bench" / ".venv-trl"
TRL_REQUIREMENTS = ("torch==2.13.0", "transformers<5.20", "trl")

__all__ = ["DEFAULT_TRL_VENV", "TRL_REQUIREMENTS", "ensure_trl_venv"]


def _create(venv: Path, python: Path) -> None:
    print(f"creating {venv} with {' '.join(TRL_REQUIREMENTS)} (once; a few minutes) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    try:
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *TRL_REQUIREMENTS], check=True)
    except subprocess.CalledProcessError:
        shutil.rmtree(venv, ignore_errors=True)  # a half-built venv would otherwise be mistaken for a ready one
        raise


def ensure_trl_venv(venv: Path = DEFAULT_TRL_VENV) -> Path:
    """The TRL venv's python, creating the venv (pinned torch, see ``TRL_REQUIREMENTS``) when it is missing."""
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
    return python
