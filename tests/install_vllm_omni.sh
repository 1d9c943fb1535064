#!/usr/bin/env bash
# The real vllm-omni source trees the inspection tests read, each in its own folder (never imported):
# 0.30.0 (2026-09-25), 0.22.0 (2026-06-08, 3.5 months older) and the 0.32.0rc1 release candidate, to prove the
# analysis is not tied to one release.
set -euo pipefail
cd "$(dirname "$0")/.."
for version in 0.30.0 0.22.0 0.32.0rc1; do
  dest=".venv/vllm-omni-src/$version"
  [ -f "$dest/vllm_omni/__init__.py" ] && continue
  .venv/bin/pip install -q --no-deps --target "$dest" "vllm-omni==$version"
done
