"""BFCL's own virtualenv (``bfcl-eval`` with every dependency), where BFCL's checker runs as the benchmark runs it.

The project's venv holds ``bfcl-eval``'s data only (installed ``--no-deps``): its checker cannot even be imported
there, because ``ast_checker.py`` imports ``constants/model_config.py``, which imports every model handler and so
the SDKs of every vendor (openai, anthropic, mistralai, cohere, google-genai, qwen-agent, writer-sdk, boto3, ...)
and ``sentence-transformers`` (hence torch). They live here instead, apart from the project's packages, and
``bench/bfcl_worker.py`` is run with this venv's python.

``torch`` is installed first, pinned to the CPU wheel on local disk (``sentence-transformers`` would otherwise pull a
CUDA build of several GB); then ``bfcl-eval`` at the version whose data the project reads, with its full, pinned
dependency list; then ``soundfile``, which ``qwen-agent`` (0.0.34) imports at start-up without declaring it (without
it the checker's import fails with ``No module named 'soundfile'``). Creating it takes a few minutes, once.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BFCL_VENV = REPO / "bench" / ".venv-bfcl"
BFCL_VERSION = "2026.3.23"
TORCH_REQUIREMENT = "torch==2.13.0"
BFCL_REQUIREMENT = f"bfcl-eval=={BFCL_VERSION}"
UNDECLARED_REQUIREMENTS = ("soundfile",)
"""Imported by bfcl-eval's dependencies without being declared by them (qwen-agent -> soundfile)."""

__all__ = ["BFCL_VERSION", "DEFAULT_BFCL_VENV", "ensure_bfcl_venv"]

_PROBE = ("import torch, bfcl_eval.eval_checker.eval_runner as r, importlib.metadata as m; "
          "print(torch.__version__, m.version('bfcl-eval'))")


def _pip(python: Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args], check=True)


def ensure_bfcl_venv(venv: Path = DEFAULT_BFCL_VENV) -> Path:
    """The BFCL venv's python, creating the venv when it is missing; RuntimeError if it exists but is unusable."""
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating {venv} with {TORCH_REQUIREMENT}, then {BFCL_REQUIREMENT} (once; a few minutes) ...",
              flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        try:
            _pip(python, TORCH_REQUIREMENT)  # first: the local CPU wheel, before anything can ask for a CUDA one
            _pip(python, TORCH_REQUIREMENT, BFCL_REQUIREMENT)  # torch restated so the resolver keeps it
            _pip(python, TORCH_REQUIREMENT, *UNDECLARED_REQUIREMENTS)
        except subprocess.CalledProcessError:
            shutil.rmtree(venv, ignore_errors=True)  # a half-built venv would be mistaken for a ready one
            raise
    probe = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True)
    if probe.returncode != 0:
        raise RuntimeError(f"{python} cannot import BFCL's checker; delete {venv} to rebuild it:\n"
                           f"{probe.stderr[-2000:]}")
    torch_version, bfcl_version = probe.stdout.split()[-2:]
    if not torch_version.startswith("2.13.0") or bfcl_version != BFCL_VERSION:
        raise RuntimeError(f"{venv} has torch {torch_version} and bfcl-eval {bfcl_version}, not 2.13.0 and "
                           f"{BFCL_VERSION}; delete it so it is rebuilt")
    return python


if __name__ == "__main__":
    print(ensure_bfcl_venv())
