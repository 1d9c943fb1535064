#!/usr/bin/env bash
# Build what the lent GPU host needs to run REAL vLLM 0.26.0 + vLLM-Omni 0.26.0 under omnitune, from the registry
# (pinned versions), and cut it into chunks a device call can carry (each call carries the whole working tree, 64 MiB
# in all). Output in OUT (default .carry/real, git-ignored):
#   part.NN   - 60 MiB chunks of a tar of the slim set's wheels (Python 3.12, installed there with --no-deps)
#   mcp/      - the wheels omnitune itself needs there beside the host's packages (mcp and its missing deps)
#   models/   - the fixture models with weights (tests/fixtures holds configs only), when given --models DIR
# Then carry them with benchmarks/real_engine/README.md's calls. Needs network access to PyPI (here, not there).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=.carry/real models=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --models) models=$2; shift 2 ;;
    *) echo "usage: $0 [--out DIR] [--models DIR]" >&2; exit 2 ;;
  esac
done
here=benchmarks/real_engine
plat=()
for n in 17 24 27 28 31 34 35; do plat+=(--platform "manylinux_2_${n}_x86_64"); done
plat+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
dl=(python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
    --abi cp312 --abi abi3 --abi none "${plat[@]}")
mkdir -p "$out/wheels" "$out/mcp"
"${dl[@]}" -d "$out/wheels" -r "$here/slim-0.26.0.txt"
"${dl[@]}" -d "$out/mcp" -r "$here/omnitune-deps.txt"
rm -f "$out"/part.* "$out/slim.tar"
# The wheels are zip files already: packing them costs seconds (xz of the installed tree took many minutes here).
tar -C "$out" -cf "$out/slim.tar" wheels
split -b 60M -d "$out/slim.tar" "$out/part."
rm "$out/slim.tar"
if [ -n "$models" ]; then rm -rf "$out/models" && cp -r "$models" "$out/models"; fi
ls -l "$out"/part.* && du -sh "$out/mcp" "$out/wheels"
