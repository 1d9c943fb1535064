"""The analysis cache: keyed by vllm-omni version and package folder, invalidated by file mtimes.

Each analysis records every file it parsed; a cached result is reused only while all of those files
keep their mtimes (an edited checkout or an upgraded install is re-read). Kept in memory and in
``<workspace>/cache/`` so that a restarted omnitune answers from disk; a new workspace in a process that already
analysed the same package starts from that analysis (``seed``) instead of parsing it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path

from pydantic import BaseModel, Field

log = logging.getLogger(__name__)
SCHEMA = 2  # bumped whenever what an analysis returns changes (2: MethodSupport.via)


class CacheData(BaseModel):
    schema_: int = Field(default=SCHEMA, alias="schema")
    version: str
    root: str
    files: dict[str, float] = Field(default_factory=dict)
    entries: dict[str, dict] = Field(default_factory=dict)   # key -> JSON of a pydantic model

    model_config = {"populate_by_name": True}


class AnalysisCache:
    """Thread-safe cache of JSON-able analysis results for one located package."""

    def __init__(self, root: Path, version: str, cache_dir: Path | None, seed: CacheData | None = None) -> None:
        self.root, self.version = root, version
        key = hashlib.sha256(str(root).encode()).hexdigest()[:12]
        self.path = cache_dir / f"capabilities-{version}-{key}.json" if cache_dir else None
        self._lock = threading.Lock()
        self._dirty = False
        loaded = self._load()
        self.seeded = loaded is None and seed is not None and self._valid(seed.files)
        self.data = loaded or (seed if self.seeded and seed is not None else CacheData(version=version, root=str(root)))
        self._dirty = self.seeded and bool(self.data.entries)  # written to this workspace too, for its next start

    def snapshot(self) -> CacheData:
        """A copy to seed another workspace's cache with (entries are never changed once put: shared)."""
        with self._lock:
            return CacheData(version=self.version, root=str(self.root), files=dict(self.data.files),
                             entries=dict(self.data.entries))

    def _load(self) -> CacheData | None:
        if self.path is None or not self.path.is_file():
            return None
        try:
            data = CacheData.model_validate_json(self.path.read_bytes())
        except (OSError, ValueError):
            log.info("ignoring unreadable capability cache %s", self.path)
            return None
        if data.schema_ != SCHEMA or data.version != self.version or data.root != str(self.root):
            return None
        return data if self._valid(data.files) else None

    def _valid(self, files: dict[str, float]) -> bool:
        for rel, mtime in files.items():
            try:
                if os.stat(self.root / rel).st_mtime != mtime:
                    return False
            except OSError:
                return False
        return True

    def check(self) -> None:
        """Drop everything if a file an analysis read has changed since."""
        with self._lock:
            if not self._valid(self.data.files):
                log.info("vllm-omni sources under %s changed: re-reading", self.root)
                self.data = CacheData(version=self.version, root=str(self.root))
                self._dirty = True

    def get(self, key: str) -> dict | None:
        return self.data.entries.get(key)

    def put(self, key: str, value: dict, files: dict[str, float]) -> None:
        with self._lock:
            self.data.entries[key] = value
            self.data.files.update(files)
            self._dirty = True

    def flush(self) -> None:
        """Write to disk (atomically); best effort: a read-only workspace only loses the warm start."""
        if self.path is None or not self._dirty:
            return
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_suffix(f".tmp{os.getpid()}")
                tmp.write_text(json.dumps(self.data.model_dump(mode="json", by_alias=True)), encoding="utf-8")
                os.replace(tmp, self.path)
                self._dirty = False
            except OSError as exc:
                log.warning("could not write the capability cache %s: %s", self.path, exc)
