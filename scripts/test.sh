#!/usr/bin/env bash
# Sets up everything the tests need (venv, dockerd, sandbox image) and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
exec .venv/bin/python -m pytest -q "$@"
