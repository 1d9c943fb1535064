#!/usr/bin/env bash
# The real vllm-omni source trees the inspection tests read, each in its own folder (never imported).
set -euo pipefail
cd "$(dirname "$0")/.."
for version in 0.30.0; do
  dest=".venv/vllm-omni-src/$version"
  [ -f "$dest/vllm_omni/__init__.py" ] && continue
  .venv/bin/pip install -q --no-deps --target "$dest" "vllm-omni==$version"
done
