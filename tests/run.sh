#!/usr/bin/env bash
# README's test command: make sure .venv has what the tests need, then run pytest (extra args go to pytest).
# Idempotent: a second run installs nothing. Needs network access to PyPI the first time only.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
if ! .venv/bin/python -c "import pytest, mcp, omnitune.server.main" 2>/dev/null; then
  .venv/bin/pip install -q --disable-pip-version-check -e ".[test]"
fi
bash tests/install_vllm_omni.sh
exec .venv/bin/python -m pytest "$@"
