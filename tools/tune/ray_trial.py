"""One trial on a Ray node, and its records brought home to the driver's workspace.

``run_on_node`` runs inside a Ray task that asked for ``num_gpus``: it launches ``vllm serve`` on the GPUs Ray
gave it with omnitune's own launcher (a workspace of its own on the node), benchmarks it there, stops it, and
returns the server, run, request and output rows plus the run's files as one archive. ``import_trial`` writes
them into the driver's workspace, where the quality gate and the tune's records live, so a remote run is
compared and reused exactly as a local one.

A server must not outlive its trial even if the node's Ray processes die (node loss, a forced cancel): before
launching, the task starts a reaper in its own session that stops the task's servers once the task's process is
gone (``python -m omnitune.tools.tune.ray_trial reap WORKSPACE PID``).

Nothing here imports ray at module level.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from omnitune.tools.workspace import Workspace

_TABLES = ("servers", "runs", "requests", "outputs")


def run_on_node(spec: dict[str, Any]) -> dict[str, Any]:
    """The body of a Ray task: measure ``spec['config']`` on the GPUs Ray assigned, return everything measured."""
    import ray

    from omnitune.tools.settings import settings_from_env
    from omnitune.tools.tune.parallel import measure_on

    gpus = sorted(int(g) for g in ray.get_gpu_ids())
    node = ray.get_runtime_context().get_node_id()
    root = Path(tempfile.mkdtemp(prefix="omnitune-trial-"))
    defaults = {k: v for k, v in spec["settings"].items() if f"OMNITUNE_{k.upper()}" not in os.environ}
    settings = settings_from_env(**defaults, workspace=root)
    reaper = subprocess.Popen([sys.executable, "-m", "omnitune.tools.tune.ray_trial", "reap", str(root),
                               str(os.getpid())], start_new_session=True, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ws = Workspace.open(settings)
    started = time.time()
    try:
        measured = measure_on(settings, ws, spec["model"], spec["workload"], {**spec["config"], "gpus": gpus},
                              labels=spec.get("labels") or {}, skip_inert_sp=bool(spec.get("skip_inert_sp")))
        return {"node": node, "gpus": gpus, "started_at": started, "ended_at": time.time(), **measured,
                "rows": _rows(ws, measured.get("server_id"), measured.get("run_id")),
                "files": _archive(ws, measured.get("server_id"), measured.get("run_id"))}
    finally:
        ws.close()
        reaper.kill()
        reaper.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def _rows(ws: Workspace, server_id: str | None, run_id: str | None) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {t: [] for t in _TABLES}
    if server_id:
        out["servers"] = [dict(r) for r in ws.store.query("SELECT * FROM servers WHERE id = ?", (server_id,))]
    if run_id:
        out["runs"] = [dict(r) for r in ws.store.query("SELECT * FROM runs WHERE id = ?", (run_id,))]
        for table in ("requests", "outputs"):
            out[table] = [dict(r) for r in ws.store.query(f"SELECT * FROM {table} WHERE run_id = ?", (run_id,))]
    return out


def _archive(ws: Workspace, *ids: str | None) -> bytes:
    """The run folders (outputs, server log, summary, telemetry) as one gzip'd tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i in ids:
            if i and (ws.runs_dir / i).is_dir():
                tar.add(ws.runs_dir / i, arcname=i)
    return buf.getvalue()


def import_trial(ws: Workspace, payload: dict[str, Any]) -> None:
    """The remote trial's rows and files into this workspace (paths rewritten to its run folders)."""
    with tarfile.open(fileobj=io.BytesIO(payload.get("files") or b""), mode="r:gz") as tar:
        for member in tar.getmembers():  # regular files and folders inside the runs folder only
            name = Path(member.name)
            if not (member.isfile() or member.isdir()) or name.is_absolute() or ".." in name.parts:
                raise ValueError(f"refused archive member {member.name!r} from a remote trial")
        tar.extractall(ws.runs_dir)
    rows = payload.get("rows") or {}
    for row in rows.get("servers", []):
        here = ws.runs_dir / row["id"]
        data = json.loads(row.get("data") or "{}")
        data.update(node=payload.get("node"), remote_run_dir=row["run_dir"], remote_pid=row.get("pid"))
        # its process ids mean nothing here: dropped, so no local process is ever taken for it
        row.update(run_dir=str(here), log_path=str(here / Path(row["log_path"]).name), data=json.dumps(data),
                   pid=None, pgid=None, proc_start_time=None,
                   status="stopped" if row["status"] in ("running", "starting") else row["status"])
        _insert(ws, "servers", row)
    for row in rows.get("runs", []):
        row["run_dir"] = str(ws.runs_dir / row["id"])
        _insert(ws, "runs", row)
    for table in ("requests", "outputs"):
        for row in rows.get(table, []):
            _insert(ws, table, row)


def _insert(ws: Workspace, table: str, row: dict[str, Any]) -> None:
    cols = list(row)  # column names come from our own schema (the node ran the same omnitune)
    ws.store.execute(f"INSERT OR REPLACE INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                     tuple(row.values()))


def reap(workspace: Path, owner: int, max_s: float = 24 * 3600) -> None:
    """Wait for ``owner`` (the task's process) to end, then stop every server launched in ``workspace``."""
    from omnitune.tools.owner import identity
    from omnitune.tools.settings import settings_from_env

    born = identity(owner)
    deadline = time.monotonic() + max_s
    while identity(owner) == born and born is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    if not (workspace / "omnitune.db").exists():
        return
    from omnitune.tools.launch.launcher import Launcher
    settings = settings_from_env({}, workspace=workspace)
    ws = Workspace.open(settings)
    try:
        launcher = Launcher(settings, ws)
        for view in launcher.list():
            if view.server.pgid and (view.alive_pids or view.state in ("running", "orphaned", "starting")):
                launcher.stop(view.server.id, grace_s=5.0)
    finally:
        ws.close()


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "reap":
    reap(Path(sys.argv[2]), int(sys.argv[3]))
