"""The flags the installed `vllm serve --omni` accepts, asked of the executable itself.

`vllm serve --omni --help=all` lists every option of the installed vLLM + vLLM-Omni pair; the list is
cached per executable (path, size, mtime) because importing vLLM takes seconds.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

FLAG = re.compile(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*|-[a-z]{1,4})(?=[\s,=\]|]|$)")


def resolve_executable(vllm: str) -> Path | None:
    found = shutil.which(vllm)
    return Path(found).resolve() if found else None


def installed_flags(vllm: str, cache_dir: Path, timeout_s: float = 180) -> tuple[set[str] | None, str]:
    """(flags, how they were obtained); flags is None with the reason when the executable cannot tell."""
    exe = resolve_executable(vllm)
    if exe is None:
        return None, f"the vllm executable {vllm!r} was not found"
    st = exe.stat()
    key = hashlib.sha256(f"{exe}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    cache = cache_dir / f"serve-flags-{key}.json"
    if cache.is_file():
        return set(json.loads(cache.read_text())), f"`{exe} serve --omni --help=all` (cached)"
    try:
        proc = subprocess.run([str(exe), "serve", "--omni", "--help=all"], capture_output=True, text=True,
                              timeout=timeout_s, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"`{exe} serve --omni --help=all` failed: {exc}"
    flags = set(FLAG.findall(proc.stdout))
    if proc.returncode != 0 or "--omni" not in flags:
        return None, f"`{exe} serve --omni --help=all` exited {proc.returncode}: {proc.stderr.strip()[-300:]}"
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(sorted(flags)))
    return flags, f"`{exe} serve --omni --help=all`"
