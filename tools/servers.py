"""Server records: what omnitune knows about each `vllm serve` it launched (the ``servers`` table).

Shared by the launcher (which writes them) and by benchmark, compare and tune (which read them to
find a server's URL, GPUs and configuration).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, Field

from omnitune.tools.errors import NotFoundError
from omnitune.tools.store import Store

ServerStatus = Literal["starting", "running", "failed", "stopped", "exited"]


class ServerRecord(BaseModel):
    id: str
    created_at: float
    model: str
    status: ServerStatus
    config: dict[str, Any] = Field(description="The ServeConfig it was launched with.")
    argv: list[str]
    env: dict[str, str] = Field(default_factory=dict, description="Environment variables omnitune set.")
    host: str
    port: int
    pid: int | None = None
    pgid: int | None = None
    proc_start_time: float | None = None
    owner_pid: int | None = None
    owner_start_time: float | None = None
    gpus: list[int] = Field(default_factory=list, description="Physical GPU indices (CUDA_VISIBLE_DEVICES).")
    run_dir: str
    log_path: str
    startup_s: float | None = None
    memory_after_load: dict[str, int] | None = Field(None, description="MiB used per physical GPU after load.")
    cause: str | None = None
    exit_code: int | None = None
    stopped_at: float | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"


_JSON_COLUMNS = ("config", "argv", "env", "gpus", "memory_after_load", "data")


def _record(row: Any) -> ServerRecord:
    values = dict(row)
    for col in _JSON_COLUMNS:
        if values.get(col) is not None:
            values[col] = json.loads(values[col])
    return ServerRecord(**values)


def get_server(store: Store, server_id: str) -> ServerRecord:
    row = store.query_one("SELECT * FROM servers WHERE id = ?", (server_id,))
    if row is None:
        recent = [r["id"] for r in store.query("SELECT id FROM servers ORDER BY created_at DESC LIMIT 5")]
        raise NotFoundError(f"no server {server_id!r}.",
                            f"use an id from launch_server or list_servers; recent: {recent or 'none'}.")
    return _record(row)


def list_server_records(store: Store) -> list[ServerRecord]:
    return [_record(r) for r in store.query("SELECT * FROM servers ORDER BY created_at")]
