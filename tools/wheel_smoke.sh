#!/usr/bin/env bash
# Issue 15's packaging check: builds the wheel with default flags, installs it in a fresh
# venv outside the checkout and runs the smoke test there (tests/packaging; minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 -m pytest -q -m slow tests/packaging "$@"
