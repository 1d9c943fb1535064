#!/usr/bin/env bash
# The real serving stack for the contract tests (tests/test_real_*.py): vLLM 0.30.0 + vLLM-Omni 0.30.0 with the
# CUDA build of torch 2.13.0 (no GPU needed to import, parse and build configs), about 9 GB, in its own venv.
# Idempotent: the marker is written only after a successful install AND a working `vllm serve --omni --help`;
# without it (a partial or interrupted install) the venv is rebuilt. A second run on the same machine reuses it.
set -euo pipefail
VENV="${OMNITUNE_REAL_VLLM_VENV:-$HOME/.cache/omnitune/real-vllm-0.30.0}"
SPEC=(torch===2.13.0 torchvision==0.28.0 vllm==0.30.0 vllm-omni==0.30.0)
MARKER="$VENV/.omnitune-real-vllm-ok"
want="${SPEC[*]}"
if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$want" ] && [ -x "$VENV/bin/vllm" ]; then
  echo "real vLLM stack ready in $VENV"
  exit 0
fi
PY="${PYTHON:-python3}"
echo "installing the real vLLM stack into $VENV (${want}; about 5 minutes)" >&2
rm -rf "$VENV"
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "${SPEC[@]}"
timeout "${OMNITUNE_REAL_VLLM_CHECK_S:-600}" "$VENV/bin/vllm" serve --omni --help >/dev/null
echo "$want" > "$MARKER"
echo "real vLLM stack ready in $VENV"
