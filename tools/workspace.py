"""The workspace folder: the database plus one folder per run, and the rule that paths stay inside it."""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from omnitune.tools.errors import InvalidRequestError, WorkspaceError
from omnitune.tools.settings import Settings
from omnitune.tools.store import Store


def new_id(prefix: str) -> str:
    """Sortable, unique ids such as ``run-20261128-201502-3f9a1c``: readable in a folder listing."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def inside(root: Path, candidate: Path) -> Path:
    """``candidate`` resolved, if it lies inside ``root``; else an error (no ``..`` or symlink escapes)."""
    resolved = candidate.expanduser().resolve()
    root = root.resolve()
    if resolved != root and root not in resolved.parents:
        raise InvalidRequestError(f"path {candidate} lies outside {root}.",
                                  f"use a path inside {root}.")
    return resolved


@dataclass
class Workspace:
    root: Path
    store: Store

    @classmethod
    def open(cls, settings: Settings) -> Workspace:
        """Create (if needed) and open the workspace; a clear error if it cannot be written."""
        root = settings.workspace
        try:
            root.mkdir(parents=True, exist_ok=True)
            settings.runs_dir.mkdir(exist_ok=True)
        except OSError as exc:
            raise WorkspaceError(f"cannot create the workspace {root}: {exc.strerror}.",
                                 "set OMNITUNE_WORKSPACE (or --workspace) to a folder you can write.") from exc
        if not os.access(root, os.W_OK | os.X_OK) or not os.access(settings.runs_dir, os.W_OK | os.X_OK):
            raise WorkspaceError(f"the workspace {root} is not writable.",
                                 "fix its permissions or set OMNITUNE_WORKSPACE (or --workspace) to another folder.")
        return cls(root=root, store=Store(settings.db_path))

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def new_run_dir(self, run_id: str) -> Path:
        """A fresh folder for one run (server, benchmark, comparison or tune job)."""
        path = inside(self.runs_dir, self.runs_dir / run_id)
        path.mkdir(parents=True, exist_ok=False)
        return path

    def resolve(self, relative: str | Path) -> Path:
        """A path an agent gave us, kept inside the workspace."""
        return inside(self.root, self.root / relative)

    def close(self) -> None:
        self.store.close()
