"""Replicas for the throughput objective: N independent servers on disjoint GPUs, requests spread over them.

On a 4-GPU world where sequence parallelism does nothing (no ``_sp_plan``), CFG parallel gives nothing and TP
little, a throughput tune picks 4 replicas of the one-GPU recipe; a latency tune never tries replicas. Decisions
are asserted, never a speed ratio on the real clock: the emulated request cost (~0.3 s) dominates.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import pytest
from mcp import Client

from omnitune.server.main import build_server
from tests.launch_helpers import QWEN, emulator_settings
from tests.test_tune import IMAGE, SRC

pytestmark = [pytest.mark.anyio, pytest.mark.slow(seconds=50)]
# SP is inert (the server log says so), CFG parallel and TP give (almost) nothing: more GPUs per request do not pay
NO_SCALING = {"model": {"sp_plan": False}, "cost": {"cfg_parallel_speedup": 1.0, "tp_efficiency": 0.5}}


async def tune(emulator, tmp_path, goal: dict) -> tuple[dict, list[dict]]:
    emulator.write("cfg4_qwen_image", **NO_SCALING)
    settings = emulator_settings(emulator, tmp_path, vllm_omni_source=SRC)
    async with Client(build_server(settings)) as client:
        plan = (await client.call_tool("plan", {"model": QWEN, "goal": goal})).structured_content
        job = await client.call_tool("tune_start", {"request": {"model": QWEN, "goal": goal, "workload": IMAGE}})
        assert job.is_error is False, job.content
        final = (await client.call_tool("job_wait", {"job_id": job.structured_content["id"],
                                                     "timeout_s": 300})).structured_content
        servers = (await client.call_tool("list_servers", {})).structured_content["servers"]
    assert final["status"] == "completed", final["error"]
    assert servers and all(s["state"] in ("stopped", "failed") for s in servers)
    assert emulator.live_pids() == []
    return final["result"], plan["candidates"]


async def test_a_throughput_tune_on_four_gpus_where_sp_does_not_pay_picks_replicas(emulator, tmp_path):
    result, planned = await tune(emulator, tmp_path, {"objective": "throughput"})
    kinds = {c["name"]: c for c in planned if c["kind"] == "replicas"}
    assert kinds["4 replicas x one GPU (4 GPUs)"]["config"]["replicas"] == 4
    for c in kinds.values():  # replicas x per-replica GPUs within the 4
        assert len(c["config"]["gpus"]) <= 4 and len(c["config"]["gpus"]) % c["config"]["replicas"] == 0
    winner = result["winner"]
    assert winner["kind"] == "replicas" and winner["config"]["replicas"] == 4
    assert winner["config"]["gpus"] == [0, 1, 2, 3]
    assert winner["name"].startswith("4 replicas x compile+fp8")
    single = next(c for c in result["candidates"] if c["name"] == "compile+fp8")
    assert winner["throughput"] > single["throughput"] * 1.05  # the decision: beyond the noise
    # the run measured all four replicas through one balancer, each warmed up and each given requests
    db = sqlite3.connect(tmp_path / "workspace" / "omnitune.db")
    run = json.loads(db.execute("SELECT data FROM runs WHERE id = ?", (winner["run_id"],)).fetchone()[0])
    workload = json.loads(db.execute("SELECT workload FROM runs WHERE id = ?", (winner["run_id"],)).fetchone()[0])
    assert len(run["replica_servers"]) == 4 and min(run["replica_requests"]) >= 2
    assert workload["concurrency"] == 4 and workload["warmup"] == 4  # GPUs kept busy; every replica warmed
    lines = result["command"].splitlines()
    assert [ln.split()[0] for ln in lines[:4]] == [f"CUDA_VISIBLE_DEVICES={g}" for g in range(4)]
    assert all(f"--port 800{g}" in lines[g] and "--quantization fp8" in lines[g] for g in range(4))
    assert lines[4].startswith("# 4 replicas")
    assert result["launches"] >= 4 + 2  # each replica is a server launch


async def test_a_latency_tune_never_tries_replicas(emulator, tmp_path):
    result, planned = await tune(emulator, tmp_path, {})
    assert not [c for c in planned if c["kind"] == "replicas"]
    assert not [c for c in result["candidates"] if c["kind"] == "replicas" or "replicas" in c["config"]]
    assert any(p["name"] == "replicas" and "latency" in p["why"] for p in result["pruned"])
    assert "replicas" not in result["winner"]["config"] and len(result["command"].splitlines()) == 1
    # an SP layout whose server said at load that it applied no SP is inert, its benchmark never run
    sp = [c for c in result["candidates"] if c["launched"] and (c["config"].get("usp") or c["config"].get("ring"))]
    assert sp and all(c["status"] == "inert" and c["run_id"] is None and "not benchmarked" in c["reason"]
                      for c in sp), [(c["name"], c["status"], c["run_id"], c["reason"]) for c in sp]


async def test_sp_a_model_drives_in_its_own_code_is_measured_although_the_server_says_no_hooks_applied(
        emulator, tmp_path):
    """A Bagel folder (no _sp_plan; its own code drives the SP group, as the installed 0.30.0 source shows): the
    server logs 'SP hooks not applied' at load and SP still runs, so SP layouts are benchmarked, not judged inert."""
    import shutil
    model = tmp_path / "models" / "tiny-bagel"
    shutil.copytree(QWEN, model)
    index = json.loads((model / "model_index.json").read_text())
    (model / "model_index.json").write_text(json.dumps({**index, "_class_name": "BagelPipeline"}))
    emulator.write("cfg4_qwen_image", model={"sp_plan": False, "sp_by_hand": True, "uses_cfg": False},
                   cost={"tp_efficiency": 0.5})
    settings = emulator_settings(emulator, tmp_path, vllm_omni_source=SRC).model_copy(
        update={"model_roots": [tmp_path / "models"]})
    async with Client(build_server(settings)) as client:
        plan = (await client.call_tool("plan", {"model": str(model)})).structured_content
        job = await client.call_tool("tune_start", {"request": {"model": str(model), "workload": IMAGE}})
        assert job.is_error is False, job.content
        final = (await client.call_tool("job_wait", {"job_id": job.structured_content["id"],
                                                     "timeout_s": 300})).structured_content
    assert plan["sp_by_hand"] is True, plan
    assert final["status"] == "completed", final["error"]
    r = final["result"]
    sp = [c for c in r["candidates"] if c["launched"] and (c["config"].get("usp") or c["config"].get("ring"))]
    assert sp, [(c["name"], c["status"]) for c in r["candidates"]]
    assert all(c["run_id"] and c["status"] != "inert" for c in sp), [(c["name"], c["status"]) for c in sp]
    assert all(any("SP hooks not applied" in w for w in c["server_warnings"]) for c in sp)
    assert r["winner"]["config"].get("usp") or r["winner"]["config"].get("ring"), r["winner"]
    assert emulator.live_pids() == []


def test_the_balancer_spreads_requests_to_the_least_busy_replica_and_warms_each_in_turn():
    """Two slow backends: two requests at once go one to each; requests in a row take turns."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from omnitune.tools.tune.replicas import Balancer

    class Slow(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(0.3)
            body = json.dumps({"port": self.server.server_address[1]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    backends = [ThreadingHTTPServer(("127.0.0.1", 0), Slow) for _ in range(2)]
    threads = [threading.Thread(target=b.serve_forever, daemon=True) for b in backends]
    for t in threads:
        t.start()
    try:
        import httpx
        with Balancer([f"http://127.0.0.1:{b.server_address[1]}" for b in backends], timeout_s=10) as lb:
            assert httpx.get(lb.url + "/health", timeout=10).status_code == 200
            in_turn = [httpx.post(lb.url + "/x", content=b"{}", timeout=10).json()["port"] for _ in range(2)]
            assert len(set(in_turn)) == 2
            answers: list[int] = []
            both = [threading.Thread(target=lambda: answers.append(
                httpx.post(lb.url + "/x", content=b"{}", timeout=10).json()["port"])) for _ in range(2)]
            for t in both:
                t.start()
            for t in both:
                t.join(10)
            assert sorted(answers) == sorted(b.server_address[1] for b in backends) and lb.served == [2, 2]
        backends[1].shutdown()
        backends[1].server_close()
        with Balancer([f"http://127.0.0.1:{b.server_address[1]}" for b in backends], timeout_s=10) as lb:
            assert httpx.get(lb.url + "/health", timeout=10).status_code == 503  # one replica down: not healthy
    finally:
        backends[0].shutdown()
        for b in backends:
            b.server_close()
