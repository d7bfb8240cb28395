#!/usr/bin/env bash
# GPU check: one training step of every algorithm on one NVIDIA GPU, SmolLM2-135M-shaped random model, bf16,
# the HF engine (and vLLM where installed). For a machine with PyTorch and a GPU but no network.
#
#   bash bench/gpu_check.sh prepare      # on a machine WITH network: wheels of the other dependencies -> bench/.wheelhouse
#   bash bench/gpu_check.sh [args...]    # on the GPU machine: installs missing deps from bench/.wheelhouse, runs
#
# Extra args go to bench/gpu_check.py (e.g. --algorithms grpo,amrsd --max-new-tokens 32 --engine vllm).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELHOUSE=bench/.wheelhouse
PY=${PYTHON:-python3}
# what the trainer imports besides torch (pyproject's env-suite deps + the train extra, minus torch)
DEPS=(gymnasium pydantic pyyaml sympy math-verify pint httpx numpy tqdm rich "transformers<5.20" tokenizers
      safetensors matplotlib accelerate)

if [[ "${1:-}" == "prepare" ]]; then
  "$PY" -m pip download --only-binary :all: -d "$WHEELHOUSE" "${DEPS[@]}"
  du -sh "$WHEELHOUSE"
  exit 0
fi

missing=$("$PY" - <<'PY'
import importlib.util
mods = ["gymnasium", "pydantic", "yaml", "sympy", "math_verify", "pint", "httpx", "numpy", "tqdm", "rich",
        "transformers", "tokenizers", "safetensors", "matplotlib", "accelerate"]
print(" ".join(m for m in mods if importlib.util.find_spec(m) is None))
PY
)
if [[ -n "$missing" ]]; then
  echo "missing: $missing"
  if [[ ! -d "$WHEELHOUSE" ]]; then
    echo "no $WHEELHOUSE: run 'bash bench/gpu_check.sh prepare' on a machine with network and copy the folder" >&2
    exit 2
  fi
  # a venv that sees the machine's torch, with the rest from the wheelhouse (no index: no network needed)
  "$PY" -m venv --system-site-packages bench/.venv-gpu
  PY=bench/.venv-gpu/bin/python
  "$PY" -m pip install -q --no-index --find-links "$WHEELHOUSE" "${DEPS[@]}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec "$PY" bench/gpu_check.py "$@"
