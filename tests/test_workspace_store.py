"""The workspace and its database: created, migrated, and never damaged when something is wrong."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client

from omnitune.server.main import build_server
from omnitune.tools import store as store_module
from omnitune.tools.errors import WorkspaceError
from omnitune.tools.settings import Settings
from omnitune.tools.store import SCHEMA_VERSION, Store
from omnitune.tools.workspace import Workspace, inside

REPO = Path(__file__).resolve().parents[1]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_new_workspace_gets_the_current_schema_in_wal_mode(tmp_path):
    ws = Workspace.open(Settings(workspace=tmp_path / "ws"))
    try:
        assert ws.store.schema_version == SCHEMA_VERSION
        assert ws.store.query_one("PRAGMA journal_mode")[0] == "wal"
        tables = {r["name"] for r in ws.store.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"servers", "runs", "requests", "outputs", "comparisons", "jobs", "tune_candidates"} <= tables
        assert (tmp_path / "ws" / "runs").is_dir()
    finally:
        ws.close()


def test_reopening_keeps_rows_and_does_not_migrate_again(tmp_path):
    settings = Settings(workspace=tmp_path / "ws")
    ws = Workspace.open(settings)
    ws.store.insert("jobs", {"id": "j1", "kind": "tune", "status": "completed", "created_at": 1.0, "updated_at": 1.0})
    ws.close()
    ws = Workspace.open(settings)
    try:
        assert ws.store.query_one("SELECT status FROM jobs WHERE id = 'j1'")["status"] == "completed"
        assert ws.store.schema_version == SCHEMA_VERSION
    finally:
        ws.close()


def test_a_later_migration_is_applied_to_an_existing_database_once(tmp_path, monkeypatch):
    path = tmp_path / "omnitune.db"
    Store(path).close()
    monkeypatch.setattr(store_module, "MIGRATIONS", [*store_module.MIGRATIONS, "CREATE TABLE extra (x INTEGER)"])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    s = Store(path)
    s.execute("INSERT INTO extra VALUES (1)")
    s.close()
    s = Store(path)  # a second open must not re-run migration 2 (it would fail: table exists)
    try:
        assert s.schema_version == SCHEMA_VERSION + 1
        assert s.query_one("SELECT count(*) FROM extra")[0] == 1
    finally:
        s.close()


def test_a_failing_migration_leaves_the_database_at_its_previous_version(tmp_path, monkeypatch):
    path = tmp_path / "omnitune.db"
    Store(path).close()
    monkeypatch.setattr(store_module, "MIGRATIONS", [*store_module.MIGRATIONS, "CREATE TABLE t (x); SELEC oops"])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(WorkspaceError, match=f"migrating .* to schema {SCHEMA_VERSION + 1} failed"):
        Store(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 't'").fetchone()[0] == 0
    conn.close()


def test_a_corrupt_database_is_refused_with_the_fix_and_left_byte_for_byte(tmp_path):
    ws_dir = tmp_path / "ws"
    ws_dir.mkdir()
    db = ws_dir / "omnitune.db"
    db.write_bytes(b"this is not sqlite" * 1000)
    before = digest(db)
    with pytest.raises(WorkspaceError) as err:
        Workspace.open(Settings(workspace=ws_dir))
    assert str(db) in str(err.value) and "move" in err.value.fix
    assert digest(db) == before


def test_a_database_from_a_newer_omnitune_is_not_touched(tmp_path):
    ws_dir = tmp_path / "ws"
    ws_dir.mkdir()
    db = ws_dir / "omnitune.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE future (x)")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.commit()
    conn.close()
    before = digest(db)
    with pytest.raises(WorkspaceError, match="newer than this omnitune"):
        Workspace.open(Settings(workspace=ws_dir))
    assert digest(db) == before


def test_a_workspace_path_that_is_a_file_is_refused_with_the_fix(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(WorkspaceError) as err:
        Workspace.open(Settings(workspace=blocker / "ws"))
    assert "OMNITUNE_WORKSPACE" in err.value.fix


def test_paths_are_kept_inside_the_workspace(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    assert inside(root, root / "a" / "b") == (root / "a" / "b").resolve()
    for escape in (root / ".." / "outside", root / "link" / "x", Path("/etc/passwd")):
        with pytest.raises(Exception, match="outside"):
            inside(root, escape)


@pytest.mark.anyio
async def test_the_server_refuses_to_start_on_a_corrupt_database_and_keeps_it(tmp_path):
    ws_dir = tmp_path / "ws"
    ws_dir.mkdir()
    (ws_dir / "omnitune.db").write_bytes(b"garbage" * 500)
    before = digest(ws_dir / "omnitune.db")
    with pytest.raises(Exception):
        async with Client(build_server(Settings(workspace=ws_dir))) as client:
            await client.list_tools()
    assert digest(ws_dir / "omnitune.db") == before


def test_the_command_line_reports_a_corrupt_database_and_exits_2(tmp_path):
    ws_dir = tmp_path / "ws"
    ws_dir.mkdir()
    (ws_dir / "omnitune.db").write_bytes(b"garbage" * 500)
    proc = subprocess.run([sys.executable, "-m", "omnitune.server.main", "--workspace", str(ws_dir)], cwd=REPO,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert "cannot be opened" in proc.stderr and "Fix:" in proc.stderr
    assert proc.stdout == ""
