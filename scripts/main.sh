#!/usr/bin/env bash
# The main job: set up .venv, then train the embedded tiny model with AMR-SD on the tool-use suite and print held-out
# pass@1 and the hint statistics before and after. The tiny model is built and warm-started (SFT on oracle and
# reflection demonstrations) on first use and cached in .cache/ inside the checkout. Extra arguments are config
# overrides, e.g. `total_steps=10`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export AMRSD_CACHE="${AMRSD_CACHE:-$PWD/.cache}"
exec .venv/bin/amrsd-train --config configs/tiny-amrsd.yaml "$@"
