"""Trials on a two-node local Ray cluster (head + one node on 127.0.0.1, each with its own emulated GPUs).

Each node is a separate Ray raylet with its own emulator world (scenario, state dir, fake NVML on its workers'
path) declaring its emulated GPUs as ``num_gpus``; the driver is this test process, with its own workspace.
Ray binds loopback only: with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 the node address stays 127.0.0.1, so the GCS
and raylets listen on 127.0.0.1 (checked below).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # node address 127.0.0.1: loopback only
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
import ray  # noqa: E402  (in the test extras: missing, these tests fail rather than skip)

from tests.conftest import FAKE_NVML_DIR, FIXTURE_MODELS, H200  # noqa: E402
from tests.emulator.harness import REPO, make_emulator  # noqa: E402

pytestmark = pytest.mark.slow(seconds=55)  # scheduled first: see tests/conftest.py

QWEN = str(FIXTURE_MODELS / "tiny-qwenimage")
WORKLOAD = {"sizes": ["64x64"], "measured": 2, "warmup": 0, "num_inference_steps": 4}
FAST = {"startup_s": 0.1, "step_s_per_megapixel": 0.002}


@contextmanager
def environ(**values: str):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class LocalCluster:
    """A Ray cluster of emulated GPU hosts on this machine."""

    def __init__(self, root: Path) -> None:
        from ray.cluster_utils import Cluster
        self.root, self.worlds, self.nodes = root, {}, {}
        # Ray's socket paths must stay < 108 chars: pytest's tmp paths (deeper still under xdist) are too long
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="omt-ray-", dir="/tmp"))
        self.saved_tmpdir = os.environ.get("RAY_TMPDIR")
        os.environ["RAY_TMPDIR"] = str(self.ray_tmp)
        (self.ray_tmp / "ray").mkdir()
        self.cluster = Cluster()
        # a node lost is noticed within about 2 s
        self.add("head", head=True, _system_config={"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                                                    "health_check_initial_delay_ms": 0})
        self.add("second")

    def add(self, name: str, head: bool = False, gpus: int = 2, **args) -> None:
        emu = make_emulator(self.root / name)
        emu.write({"gpus": [H200] * gpus, "cost": FAST})
        self.worlds[name] = emu
        with environ(**emu.env, PYTHONPATH=os.pathsep.join([str(FAKE_NVML_DIR), str(REPO)])):
            node = self.cluster.add_node(num_cpus=1, num_gpus=gpus, object_store_memory=80 * 1024 * 1024,
                                         include_dashboard=False, **args)
        self.nodes[name] = node

    def node_id(self, name: str) -> str:
        return self.nodes[name].node_id

    def kill(self, name: str) -> None:
        self.cluster.remove_node(self.nodes.pop(name), allow_graceful=False)

    def shutdown(self) -> None:
        ray.shutdown()
        self.cluster.shutdown()
        if self.saved_tmpdir is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = self.saved_tmpdir
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = LocalCluster(tmp_path_factory.mktemp("rc", numbered=True))
    yield c
    c.shutdown()


@pytest.fixture
def driver(cluster, tmp_path):
    from omnitune.tools.settings import Settings
    from omnitune.tools.workspace import Workspace
    settings = Settings.model_validate({"workspace": tmp_path / "driver", "vllm": str(cluster.worlds["head"].shim),
                                        "model_roots": [FIXTURE_MODELS], "ray_address": cluster.cluster.address})
    ws = Workspace.open(settings)
    yield settings, ws
    ws.close()


def emulated_servers(cluster: LocalCluster) -> list[int]:
    """Live emulated servers on any node (their state files' pids, checked alive)."""
    return [pid for emu in cluster.worlds.values() for pid in emu.live_pids()]


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_the_cluster_listens_on_loopback_only(cluster, driver):
    from omnitune.tools.tune.ray_cluster import cluster_gpus, connect
    connect(driver[0].ray_address)
    ours = {p.pid for p in psutil.Process().children(recursive=True)}
    addresses = {getattr(c.laddr, "ip", None) for c in psutil.net_connections("inet")
                 if c.status == "LISTEN" and c.pid in ours}
    assert addresses and addresses <= {"127.0.0.1", "::ffff:127.0.0.1"}, addresses
    assert sorted(cluster_gpus(ray).values()) == [2, 2]


def test_trials_run_on_both_nodes_and_their_runs_are_compared_in_the_driver_workspace(cluster, driver):
    from omnitune.tools.compare import compare_runs
    from omnitune.tools.tune.ray_cluster import RayTrials
    settings, ws = driver
    trials = RayTrials(settings, ws, settings.ray_address, timeout_s=120)
    batch = [("baseline", {"enforce_eager": True}, 2), ("compile", {}, 2), ("fp8", {"quantization": "fp8"}, 2)]
    results = trials.run_many(batch, QWEN, WORKLOAD, labels={"tune_job": "t1"})
    assert [r["error"] for r in results] == [None, None, None]
    nodes = {p.node for p in trials.timeline}
    assert nodes == {cluster.node_id("head"), cluster.node_id("second")}  # 3 two-GPU trials, two 2-GPU nodes
    for r in results:  # the rows and files now live in the driver's workspace
        run = ws.store.query_one("SELECT run_dir, status FROM runs WHERE id = ?", (r["run_id"],))
        assert run["status"] == "completed" and Path(run["run_dir"]).is_relative_to(ws.runs_dir)
        assert ws.store.query_one("SELECT COUNT(*) AS n FROM outputs WHERE run_id = ?", (r["run_id"],))["n"] == 2
        server = ws.store.query_one("SELECT status, log_path FROM servers WHERE id = ?", (r["server_id"],))
        assert server["status"] == "stopped" and Path(server["log_path"]).read_text()
    same = compare_runs(ws, results[0]["run_id"], results[1]["run_id"])
    lossy = compare_runs(ws, results[0]["run_id"], results[2]["run_id"])
    assert same.verdict == "identical" and lossy.verdict != "identical"
    assert emulated_servers(cluster) == []


async def ray_tune(cluster: LocalCluster, emulator, tmp_path: Path, **world) -> dict:
    """A whole tune through MCP on the cluster, every node's world (and the driver's, which plans from a host like
    the nodes) cfg4_qwen_image on 2 H200s with ``world`` on top; the completed job's result."""
    from mcp import Client

    from omnitune.server.main import build_server
    from omnitune.tools.settings import Settings
    from tests.test_tune import IMAGE, SRC
    for emu in [emulator, *cluster.worlds.values()]:
        emu.write("cfg4_qwen_image", gpus=[H200] * 2, cost={"startup_s": 0.1}, **world)
    settings = Settings.model_validate({"workspace": tmp_path / "driver", "vllm": str(emulator.shim),
                                        "model_roots": [FIXTURE_MODELS], "vllm_omni_source": SRC,
                                        "ray_address": cluster.cluster.address})
    async with Client(build_server(settings)) as client:
        job = await client.call_tool("tune_start", {"request": {"model": QWEN, "workload": IMAGE}})
        final = (await client.call_tool("job_wait", {"job_id": job.structured_content["id"],
                                                     "timeout_s": 240})).structured_content
    assert final["status"] == "completed", final["error"]
    return final["result"]


@pytest.mark.anyio
async def test_tune_start_runs_a_tune_across_the_two_nodes(cluster, emulator, tmp_path):
    """The whole tune through MCP: every server-level candidate a Ray task; the gate and records on the driver."""
    r = await ray_tune(cluster, emulator, tmp_path)
    # a 2-GPU layout wins (CFG parallel 1.9x should beat ring 1.4x; with both cores busy a starved server once made
    # it the slower one, so which of the two is within a busy machine's noise)
    assert r["winner"]["name"] in ("cfg_parallel_size=2 (2 GPUs)", "ring=2 (2 GPUs)"), [
        (c["name"], c["p50_s"]) for c in r["candidates"]]
    assert {p["node"] for p in r["timeline"]} == {cluster.node_id("head"), cluster.node_id("second")}
    assert all(c["status"] != "failed" for c in r["candidates"])
    assert by_status(r, "measured") >= 3 and r["launches"] == len(r["timeline"])
    assert emulator.live_pids() == [] and emulated_servers(cluster) == []  # nothing ran on the driver's host


@pytest.mark.anyio
async def test_an_sp_layout_a_node_says_it_ignored_is_inert_there_without_a_benchmark(cluster, emulator, tmp_path):
    """A model with no _sp_plan on both nodes: the server logs at load that SP hooks were not applied. The Ray task
    stops it there without benchmarking (a real video benchmark takes minutes) and the driver records the layout
    inert with the node's warning, as a local trial would."""
    r = await ray_tune(cluster, emulator, tmp_path, model={"sp_plan": False})
    sp = [c for c in r["candidates"] if c["launched"] and (c["config"].get("usp") or c["config"].get("ring"))]
    assert sp, [(c["name"], c["status"]) for c in r["candidates"]]
    for c in sp:
        assert c["status"] == "inert" and c["run_id"] is None and "not benchmarked" in c["reason"], c
        assert any("SP hooks not applied" in w for w in c["server_warnings"]), c
    assert {p["node"] for p in r["timeline"]} <= {cluster.node_id("head"), cluster.node_id("second")}
    assert r["winner"] and not (r["winner"]["config"].get("usp") or r["winner"]["config"].get("ring"))
    assert emulator.live_pids() == [] and emulated_servers(cluster) == []


def by_status(result: dict, status: str) -> int:
    return sum(c["status"] == status for c in result["candidates"])


def test_a_node_lost_mid_tune_is_a_failed_trial_and_the_tune_goes_on(cluster, driver):
    from omnitune.tools.tune.ray_cluster import RayTrials
    settings, ws = driver
    cluster.worlds["second"].write({"gpus": [H200] * 2, "cost": FAST,
                                    "faults": {"hang_on": [1], "hang_s": 300}})  # its trials hang until killed
    trials = RayTrials(settings, ws, settings.ray_address, timeout_s=120)
    second = cluster.node_id("second")

    def kill_when_second_serves() -> None:
        assert wait_for(lambda: cluster.worlds["second"].live_pids(), 90)
        cluster.kill("second")

    import threading
    killer = threading.Thread(target=kill_when_second_serves, daemon=True)
    killer.start()
    t0 = time.monotonic()
    results = trials.run_many([(f"t{i}", {"enforce_eager": True}, 2) for i in range(3)], QWEN, WORKLOAD)
    killer.join(5)
    assert time.monotonic() - t0 < 200  # the hanging trial ended with its node, not after 300 s
    failed = [r for r in results if r["error"]]
    assert len(failed) == 1 and any(w in failed[0]["error"] for w in ("Died", "died", "Crashed", "crashed",
                                                                       "Unavailable", "lost"))
    done = [p for p in trials.timeline if p.status == "done"]
    assert len(done) == 2 and all(p.node == cluster.node_id("head") for p in done) and second not in \
        {p.node for p in done}
    # the lost node's server is stopped by its reaper, not left running
    assert wait_for(lambda: not cluster.worlds["second"].live_pids(), 30)
    # a node joining later takes trials again: the tune resumes at full width
    cluster.add("third")
    again = trials.run_many([("u0", {"enforce_eager": True}, 2), ("u1", {"enforce_eager": True}, 2)], QWEN, WORKLOAD)
    assert [r["error"] for r in again] == [None, None]
    assert {p.node for p in trials.timeline[-2:]} == {cluster.node_id("head"), cluster.node_id("third")}
    assert emulated_servers(cluster) == []


@pytest.mark.anyio
async def test_a_node_killed_mid_tune_fails_its_trial_as_node_lost_and_resume_completes_the_tune(
        cluster, emulator, tmp_path):
    """A whole tune job through MCP across the two nodes; the second node is killed while a trial runs there. That
    trial is recorded as failed (node_lost), the job ends failed but resumable with every other result recorded,
    and tune_start(resume=...) completes it on the node left: nothing measured twice, no server left running.
    Last in the module: it leaves the cluster with the head alone."""
    import sqlite3
    import threading

    from mcp import Client

    from omnitune.server.main import build_server
    from omnitune.tools.settings import Settings
    from tests.test_tune import IMAGE, SRC
    world = {"gpus": [H200] * 2, "cost": {"startup_s": 0.1}}
    other = next(name for name in cluster.nodes if name != "head")
    for emu in [emulator, *cluster.worlds.values()]:
        emu.write("cfg4_qwen_image", **world)
    settings = Settings.model_validate({"workspace": tmp_path / "driver", "vllm": str(emulator.shim),
                                        "model_roots": [FIXTURE_MODELS], "vllm_omni_source": SRC,
                                        "ray_address": cluster.cluster.address})
    db = tmp_path / "driver" / "omnitune.db"

    def measured() -> int:
        try:
            with sqlite3.connect(db, timeout=5) as con:
                return con.execute("SELECT count(*) FROM tune_candidates WHERE status = 'measured'").fetchone()[0]
        except sqlite3.Error:
            return 0

    killed: list[str] = []

    def kill_mid_tune() -> None:
        """Once a trial is measured, the other node's next servers hang on their first request; the node is
        killed once one of them has been up for 3 s (a trial is running there)."""
        if not wait_for(lambda: measured() >= 1, 120):
            return
        cluster.worlds[other].write("cfg4_qwen_image", **world, faults={"hang_on": [1], "hang_s": 300})
        first_seen: dict[int, float] = {}

        def hung() -> bool:
            now = time.monotonic()
            live = cluster.worlds[other].live_pids()
            for pid in live:
                first_seen.setdefault(pid, now)
            return any(now - first_seen[pid] >= 3 for pid in live)

        if wait_for(hung, 120):
            killed.append(cluster.node_id(other))
            cluster.kill(other)

    killer = threading.Thread(target=kill_mid_tune, daemon=True)
    killer.start()
    async with Client(build_server(settings)) as client:
        job = await client.call_tool("tune_start", {"request": {"model": QWEN, "workload": IMAGE}})
        job_id = job.structured_content["id"]
        first = (await client.call_tool("job_wait", {"job_id": job_id, "timeout_s": 240})).structured_content
        killer.join(10)
        assert killed, "the other node was never killed while a trial ran there"
        assert first["status"] == "failed" and "a Ray node was lost" in first["error"], first
        assert f"tune_start(resume='{job_id}')" in first["error"]
        with sqlite3.connect(db) as con:
            rows = [json.loads(r[0]) for r in con.execute(
                "SELECT data FROM tune_candidates WHERE job_id = ? ORDER BY idx", (job_id,))]
        lost = [r["outcome"] for r in rows if r["outcome"]["cause"] == "node_lost"]
        assert len(lost) == 1 and lost[0]["status"] == "failed" and "node lost" in lost[0]["reason"]
        assert len(rows) >= 2  # measured before the kill, and kept
        # the lost node's server is stopped by its reaper; nothing ran on the driver's host
        assert wait_for(lambda: not cluster.worlds[other].live_pids(), 30)
        resumed = await client.call_tool("tune_start", {"resume": job_id})
        assert resumed.is_error is False, resumed.content
        final = (await client.call_tool("job_wait", {"job_id": job_id, "timeout_s": 240})).structured_content
    assert final["status"] == "completed", final["error"]
    r = final["result"]
    assert r["winner"] and any("1 trial(s) lost with a Ray node run again" in n for n in r["notes"])
    again = next(c for c in r["candidates"] if c["name"] == lost[0]["name"])
    assert again["status"] != "failed" and again["run_id"] and not again["resumed"]  # measured after the resume
    with sqlite3.connect(db) as con:
        rows = [json.loads(d) for d, in con.execute("SELECT data FROM tune_candidates WHERE job_id = ?", (job_id,))]
    decided = [row["key"] for row in rows if row["outcome"]["cause"] != "node_lost"]
    assert len(decided) == len(set(decided))  # no configuration measured (or decided) twice
    run_ids = [row["outcome"]["run_id"] for row in rows if row["outcome"]["run_id"]]
    assert len(run_ids) == len(set(run_ids))  # every recorded run is one trial's, once
    assert {p["node"] for p in r["timeline"] if p["status"] == "done"} <= {cluster.node_id("head"), *killed}
    assert emulator.live_pids() == [] and emulated_servers(cluster) == []
