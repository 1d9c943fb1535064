#!/usr/bin/env bash
# README's test command: make sure .venv has what the tests need, then run pytest (extra args go to pytest).
# Idempotent: a second run installs nothing. Needs network access to PyPI the first time only.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
if ! .venv/bin/python -c "import pytest, xdist, mcp, omnitune.server.main, importlib.util as u; assert u.find_spec('ray')" 2>/dev/null; then
  .venv/bin/pip install -q --disable-pip-version-check -e ".[test]"
fi
bash tests/install_vllm_omni.sh
# The real serving stack, the oracle of the contract tests (tests/test_real_*.py, tests/test_emulator_real_contract.py),
# installed once and cached (about 5 minutes and 9 GB the first time).
export OMNITUNE_REAL_VLLM_VENV="${OMNITUNE_REAL_VLLM_VENV:-$HOME/.cache/omnitune/real-vllm-0.30.0}"
bash tests/install_real_vllm.sh
# Modules spread over OMNITUNE_TEST_WORKERS processes (default 6 on 2 cores: most tests wait on servers and simulated
# time); a module stays on one worker, so its module- and session-scoped fixtures (the real stack's answers, a Ray
# cluster) are built once. OMNITUNE_TEST_WORKERS=0 runs everything in this process.
# Byte-code caches on (some images set PYTHONDONTWRITEBYTECODE): the suite starts some hundred Python processes
# (omnitune, the emulator) and pytest workers, each of which would otherwise compile the same sources again.
unset PYTHONDONTWRITEBYTECODE
workers="${OMNITUNE_TEST_WORKERS:-6}"
unset OMNITUNE_TEST_WORKERS  # omnitune refuses OMNITUNE_* variables it does not know (the Ray nodes inherit them)
exec .venv/bin/python -m pytest -n "$workers" --dist loadfile --no-loadscope-reorder "$@"
