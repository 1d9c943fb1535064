"""The workspace database: stdlib sqlite3 in WAL mode, schema versioned by ``PRAGMA user_version``.

Every write commits at once (synchronous=FULL), so a crash of omnitune or a killed server loses
nothing already recorded. A database that is corrupt or newer than this omnitune is never
touched: opening it fails with the path and the fix, and the file is left as it was.

Migrations are append-only: add a new entry to ``MIGRATIONS``; never edit an applied one.
Tables keep a ``data`` JSON column so modules can record details without a migration.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omnitune.tools.errors import WorkspaceError

MIGRATIONS: list[str] = [
    # 1: the whole life of a tuning session: servers, benchmark runs, their requests and
    # outputs, comparisons, background jobs and tune candidates.
    """
    CREATE TABLE servers (
        id TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        model TEXT NOT NULL,
        status TEXT NOT NULL,             -- starting | running | failed | stopped | exited
        config TEXT NOT NULL,             -- ServeConfig JSON
        argv TEXT NOT NULL,               -- JSON list
        env TEXT NOT NULL DEFAULT '{}',   -- the variables omnitune set (JSON)
        host TEXT NOT NULL,
        port INTEGER NOT NULL,
        pid INTEGER,
        pgid INTEGER,
        proc_start_time REAL,             -- psutil create_time, to tell a reused pid apart
        owner_pid INTEGER,                -- the omnitune process that launched it
        owner_start_time REAL,
        gpus TEXT NOT NULL DEFAULT '[]',  -- physical GPU indices (JSON)
        run_dir TEXT NOT NULL,
        log_path TEXT NOT NULL,
        startup_s REAL,
        memory_after_load TEXT,           -- JSON {gpu_index: MiB}
        cause TEXT,                       -- classified failure cause
        exit_code INTEGER,
        stopped_at REAL,
        data TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        finished_at REAL,
        kind TEXT NOT NULL,               -- benchmark
        status TEXT NOT NULL,             -- running | completed | failed | cancelled
        server_id TEXT,
        model TEXT,
        config_key TEXT,                  -- canonical serve config + model + version + GPUs, for reuse
        workload TEXT NOT NULL DEFAULT '{}',
        summary TEXT,
        run_dir TEXT NOT NULL,
        data TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX runs_config_key ON runs(config_key);
    CREATE TABLE requests (
        run_id TEXT NOT NULL REFERENCES runs(id),
        idx INTEGER NOT NULL,             -- order of sending within the run
        phase TEXT NOT NULL,              -- warmup | measured
        prompt_index INTEGER,
        prompt TEXT,
        seed INTEGER,
        params TEXT NOT NULL DEFAULT '{}',-- the exact request parameters (JSON)
        started_at REAL,
        latency_s REAL,
        ok INTEGER NOT NULL,
        error TEXT,
        server_metrics TEXT,              -- inference_time_s, peak_memory_mb, stage_durations (JSON)
        PRIMARY KEY (run_id, idx)
    );
    CREATE TABLE outputs (
        run_id TEXT NOT NULL REFERENCES runs(id),
        request_idx INTEGER NOT NULL,
        n_index INTEGER NOT NULL,         -- index within the request's n outputs
        prompt_index INTEGER,
        seed INTEGER,
        kind TEXT NOT NULL,               -- image | video
        path TEXT NOT NULL,               -- relative to the run folder
        width INTEGER,
        height INTEGER,
        frames INTEGER,
        PRIMARY KEY (run_id, request_idx, n_index)
    );
    CREATE TABLE comparisons (
        id TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        baseline_run TEXT NOT NULL,
        candidate_run TEXT NOT NULL,
        verdict TEXT NOT NULL,
        summary TEXT NOT NULL,
        dir TEXT NOT NULL
    );
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,               -- benchmark | tune
        status TEXT NOT NULL,             -- pending | running | completed | failed | cancelled | interrupted
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        progress REAL NOT NULL DEFAULT 0,
        total REAL,
        message TEXT,
        params TEXT NOT NULL DEFAULT '{}',
        result TEXT,
        error TEXT,
        owner_pid INTEGER
    );
    CREATE TABLE tune_candidates (
        job_id TEXT NOT NULL REFERENCES jobs(id),
        idx INTEGER NOT NULL,
        config TEXT NOT NULL,
        status TEXT NOT NULL,             -- pending | measured | pruned | failed | reused
        reason TEXT,
        run_id TEXT,
        comparison_id TEXT,
        data TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (job_id, idx)
    );
    """,
    # 2: a job's owner is (pid, start time), the one liveness rule (tools/owner.py): a pid alone cannot tell a
    # live second omnitune from a dead one whose pid was reused.
    """
    ALTER TABLE jobs ADD COLUMN owner_start_time REAL;
    """,
    # 3: job states named as the MCP tasks extension names them (working | input_required | completed | failed |
    # cancelled). A pending or running job is working; an interrupted one (its omnitune died) failed, and says why.
    """
    UPDATE jobs SET status = 'working' WHERE status IN ('pending', 'running');
    UPDATE jobs SET status = 'failed',
        error = COALESCE(error, 'interrupted: omnitune stopped while this job ran, results recorded so far are kept')
        WHERE status = 'interrupted';
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def dumps(value: Any) -> str:
    """JSON for a column: compact, stable key order, paths and other objects as strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def write_error(path: Path, exc: Exception) -> WorkspaceError:
    """A failed write as an agent-readable error: the database's path, sqlite's words and the fix."""
    text = str(exc)
    if "full" in text.lower():
        fix = f"free disk space on the file system of {path} (or point OMNITUNE_WORKSPACE elsewhere), then retry."
    elif isinstance(exc, (OverflowError, sqlite3.InterfaceError, sqlite3.IntegrityError)):
        fix = "this value cannot be stored; report it as a bug if the input was valid."
    else:
        fix = f"check that {path} and its folder are writable and the disk is healthy, then retry."
    return WorkspaceError(f"writing to the workspace database {path} failed: {type(exc).__name__}: {text}.", fix)


class Store:
    """One sqlite connection shared by threads behind a lock (jobs write from worker threads).

    Every failed write raises :class:`WorkspaceError` (disk full, I/O error, a value sqlite cannot hold): callers
    must surface it, never drop it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._conn = self._open(path)

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        fix_corrupt = (f"move {path} aside (omnitune never overwrites it) or point OMNITUNE_WORKSPACE "
                       "at another folder; `sqlite3 FILE .recover` can salvage its rows.")
        try:
            conn = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            # Read-only checks first: a file we refuse must stay byte-for-byte as it was.
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise WorkspaceError(f"the workspace database {path} cannot be opened: {exc}.", fix_corrupt) from exc
        if check != "ok":
            conn.close()
            raise WorkspaceError(f"the workspace database {path} is corrupt ({check}).", fix_corrupt)
        if version > SCHEMA_VERSION:
            conn.close()
            raise WorkspaceError(
                f"the workspace database {path} has schema version {version}, newer than this omnitune "
                f"understands ({SCHEMA_VERSION}).",
                "upgrade omnitune, or use another workspace; the database was not changed.")
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            Store._migrate(conn, path)
            Store._check_tables(conn, path, fix_corrupt)
        except sqlite3.DatabaseError as exc:  # e.g. a full disk while creating the WAL or migrating
            conn.close()
            raise write_error(path, exc) from exc
        except Exception:
            conn.close()
            raise
        return conn

    @staticmethod
    def _check_tables(conn: sqlite3.Connection, path: Path, fix: str) -> None:
        """A table dropped by hand would surface as a raw sqlite3 error deep inside some tool: say so at start."""
        expected = {m.group(1) for sql in MIGRATIONS for m in re.finditer(r"CREATE TABLE (\w+)", sql)}
        present = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = sorted(expected - present)
        if missing:
            raise WorkspaceError(f"the workspace database {path} lacks the table(s) {', '.join(missing)} that its "
                                 "schema version says it has.", fix)

    @staticmethod
    def _migrate(conn: sqlite3.Connection, path: Path) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number in range(version, SCHEMA_VERSION):
            try:
                conn.execute("BEGIN IMMEDIATE")
                for statement in _split_sql(MIGRATIONS[number]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={number + 1}")
                conn.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise WorkspaceError(f"migrating {path} to schema {number + 1} failed: {exc}.",
                                     f"{write_error(path, exc).fix} The database was left at its previous "
                                     "version.") from exc

    @property
    def schema_version(self) -> int:
        row = self.query_one("PRAGMA user_version")
        assert row is not None  # a PRAGMA always answers one row
        return int(row[0])

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Several writes that must land together (or not at all)."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.DatabaseError as exc:
                raise write_error(self.path, exc) from exc
            try:
                yield self._conn
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            try:
                self._conn.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise write_error(self.path, exc) from exc

    def execute(self, sql: str, params: tuple | dict = ()) -> int:
        """One write, committed before returning; the affected row count. A failed write raises WorkspaceError."""
        with self._lock:
            try:
                return self._conn.execute(sql, params).rowcount
            except (sqlite3.DatabaseError, sqlite3.InterfaceError, OverflowError) as exc:
                raise write_error(self.path, exc) from exc

    def query(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def query_one(self, sql: str, params: tuple | dict = ()) -> sqlite3.Row | None:
        with self._lock:
            return self._conn.execute(sql, params).fetchone()

    def insert(self, table: str, row: dict[str, Any]) -> None:
        """Insert a row; dict/list values are stored as JSON. Table and column names are ours, not input."""
        cols = list(row)
        values = [dumps(v) if isinstance(v, (dict, list)) else v for v in row.values()]
        self.execute(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", tuple(values))

    def update(self, table: str, key: dict[str, Any], changes: dict[str, Any]) -> int:
        sets = ", ".join(f"{c} = ?" for c in changes)
        where = " AND ".join(f"{c} = ?" for c in key)
        values = [dumps(v) if isinstance(v, (dict, list)) else v for v in changes.values()]
        return self.execute(f"UPDATE {table} SET {sets} WHERE {where}", (*values, *key.values()))

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _split_sql(script: str) -> list[str]:
    """Statements of a migration script (ours: no semicolons inside strings); comments dropped."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def now() -> float:
    return time.time()
