"""Parallel trials on disjoint GPU sets: placement invariants (pure) and the runner against the emulator."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import pytest

from omnitune.tools.gpus import Gpu, GpuLink, GpuReport, HostInfo
from omnitune.tools.tune.parallel import (
    ParallelRunner,
    ServerSweeper,
    TrialsCancelled,
    agree,
    finalists,
    measure_on,
    timeline_markdown,
)
from omnitune.tools.tune.placement import Ask, Topology, choose, fits_now, place, usable_gpus
from tests.launch_helpers import QWEN, emulator_processes, emulator_settings, world

pytestmark = pytest.mark.slow(seconds=30)  # scheduled first: see tests/conftest.py

HOST = HostInfo(cpu_cores_logical=2, cpu_cores_physical=2, ram_total_mib=1, ram_available_mib=1, workspace="/",
                workspace_disk_free_mib=None)


def report(n: int, nvlink_pairs: list[tuple[int, int]] | None = None, nvswitch: bool = False,
           topology: dict[tuple[int, int], str] | None = None, gpu_fields: dict[int, dict] | None = None) -> GpuReport:
    """n GPUs; NVLink between every pair (nvswitch), between the given pairs, or none (PCIe, 'system')."""
    gpus = [Gpu(**{"index": i, "memory_total_mib": 80000, "memory_used_mib": 0, "memory_free_mib": 80000,
                   **(gpu_fields or {}).get(i, {})}) for i in range(n)]
    links = []
    for a in range(n):
        for b in range(a + 1, n):
            linked = nvswitch or (a, b) in (nvlink_pairs or [])
            links.append(GpuLink.model_validate({"a": a, "b": b, "nvlink": linked,
                                                 "topology": (topology or {}).get((a, b), "system")}))
    return GpuReport.model_validate({"available": True, "gpu_count": n, "gpus": gpus, "links": links, "host": HOST})


# -- placement (pure) ---------------------------------------------------------------------------------
def test_two_gpu_trials_go_on_nvlink_pairs():
    topo = Topology.of(report(4, nvlink_pairs=[(0, 1), (2, 3)]))
    sets = place([Ask(2), Ask(2)], range(4), topo)
    assert sorted(map(tuple, sets)) == [(0, 1), (2, 3)]  # type: ignore[arg-type]
    assert choose(2, [0, 2, 3], topo) == [2, 3]


def test_a_one_gpu_trial_takes_a_gpu_whose_partner_is_gone_and_leaves_a_pair_whole():
    topo = Topology.of(report(6, nvlink_pairs=[(2, 3), (4, 5)]))
    assert choose(1, [2, 3, 4], topo) == [4]  # 5 is busy: taking 2 or 3 would break the 2-3 pair
    started = fits_now([Ask(1), Ask(2)], [2, 3, 4], topo)
    assert started == {0: [4], 1: [2, 3]}


def test_pcie_host_keeps_a_trial_under_one_host_bridge():
    near = {(0, 1): "host_bridge", (2, 3): "host_bridge"}
    topo = Topology.of(report(4, topology=near))
    assert sorted(map(tuple, place([Ask(2), Ask(2)], range(4), topo))) == [(0, 1), (2, 3)]  # type: ignore[arg-type]


def test_no_gpu_is_ever_given_to_two_trials():
    rng = random.Random(7)
    for _ in range(300):
        n = rng.choice([2, 4, 8])
        pairs = [(a, a + 1) for a in range(0, n, 2)] if rng.random() < 0.5 else []
        topo = Topology.of(report(n, nvlink_pairs=pairs, nvswitch=rng.random() < 0.3))
        free = sorted(rng.sample(range(n), rng.randint(0, n)))
        asks = [Ask(rng.choice([1, 1, 2, 4, 8])) for _ in range(rng.randint(1, 6))]
        for sets in (place(asks, free, topo), list(fits_now(asks, free, topo).values())):
            chosen = [g for s in sets if s for g in s]
            assert len(chosen) == len(set(chosen)) and set(chosen) <= set(free)
        for i, s in enumerate(place(asks, free, topo)):
            assert s is None or len(s) == asks[i].gpus
        assert len(fits_now(asks, free, topo, limit=1)) <= 1


def test_gpus_held_by_a_server_or_foreign_memory_or_mig_are_not_usable():
    r = report(4, gpu_fields={2: {"memory_used_mib": 30000, "memory_free_mib": 50000}, 3: {"mig_mode": "enabled"}})
    free, why = usable_gpus(r, held=[0])
    assert free == [1]
    assert "omnitune server" in why[0] and "in use" in why[2] and "MIG" in why[3]
    free, why = usable_gpus(r, held=[0], memory_mib=40000)  # the estimate fits beside the foreign process
    assert free == [1, 2]
    assert usable_gpus(r, memory_mib=60000)[0] == [0, 1]


def test_finalists_are_the_best_and_everything_within_its_noise():
    scores = [(1.00, 0.01), (1.01, 0.01), (1.30, 0.01), None, (1.04, 0.002)]
    assert finalists(scores) == [0, 1]  # 1.04 is 4% off with errors of ~1%: out
    assert finalists([(1.0, 0.05), (1.08, 0.05), (1.5, 0.01)]) == [0, 1]  # 8% is within 2 x 7% combined error
    assert agree((1.0, None), (1.015, None)) and not agree((1.0, None), (1.05, None))


# -- the runner on the emulator ------------------------------------------------------------------------
WORKLOAD = {"sizes": ["64x64"], "measured": 2, "warmup": 0, "num_inference_steps": 4}


@pytest.fixture
def host(emulator, tmp_path):
    from omnitune.tools.launch.launcher import Launcher
    from omnitune.tools.workspace import Workspace

    def make(gpus: int, **fields):
        emulator.write(world(gpus, **fields))
        settings = emulator_settings(emulator, tmp_path)
        ws = Workspace.open(settings)
        return settings, ws, Launcher(settings, ws)
    yield make
    assert emulator_processes(emulator) == []  # no server outlives a test


class SharedGpuWatch:
    """Samples the emulator's live servers and remembers any physical GPU two of them held at once."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir, self.shared, self.seen = state_dir, [], set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            owners: dict[str, int] = {}
            for f in self.state_dir.glob("*.json"):
                try:
                    data = json.loads(f.read_text())
                except (OSError, ValueError):
                    continue
                for gpu in data.get("memory_mib", {}):
                    if gpu in owners and owners[gpu] != data["pid"]:
                        self.shared.append(gpu)
                    owners[gpu] = data["pid"]
                    self.seen.add(int(gpu))

    def __enter__(self) -> SharedGpuWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def runner(settings, ws, launcher, run_one=None, **kw) -> ParallelRunner:
    def default(config: dict, gpus: list[int]) -> dict:
        return measure_on(settings, ws, QWEN, WORKLOAD, {**strip(config), "gpus": gpus}, launcher=launcher)
    return ParallelRunner(run_one or default, name_of=lambda c: c["name"],
                          on_error=lambda c, g, e: {"error": str(e), "gpus": g}, workspace_root=ws.root,
                          sweeper=ServerSweeper(launcher), **kw)


def trial(name: str, **config) -> dict:
    return {"name": name, "enforce_eager": True, **config}


def strip(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "name"}


def test_a_batch_runs_side_by_side_on_disjoint_gpus_and_the_timeline_says_where_and_when(host, emulator):
    settings, ws, launcher = host(4)
    r = runner(settings, ws, launcher)
    batch = [(trial("a"), 1), (trial("b"), 1), (trial("c", cfg_parallel_size=2), 2), (trial("d"), 1)]
    with SharedGpuWatch(emulator.state_dir) as watch:
        results = r.run_many(batch)
    assert watch.shared == [] and watch.seen == {0, 1, 2, 3}
    assert {v.server.status for v in launcher.list()} == {"stopped"}  # none recorded 'exited' by a race
    assert all(res["p50_s"] and not res["error"] for res in results[:3])
    by = {p.trial: p for p in r.timeline}
    # a, b and c fit together and started before any trial ended; d waited for a GPU
    assert max(by[t].started_at for t in "abc") < min(by[t].ended_at for t in "abc")  # type: ignore[operator]
    assert set(by["a"].beside) >= {"b", "c"} and not by["a"].alone
    used = [g for t in "abc" for g in by[t].gpus]
    assert len(used) == len(set(used)) == 4 and len(by["c"].gpus) == 2 and by["c"].nvlink is True
    assert by["d"].started_at >= min(by[t].ended_at for t in "abc") - 0.01  # type: ignore[operator]
    for t, res in zip("abcd", results, strict=True):  # each run was measured on the GPUs the timeline names
        run = ws.store.query_one("SELECT data FROM runs WHERE id = ?", (res["run_id"],))
        assert json.loads(run["data"])["gpus"] == by[t].gpus
    table = timeline_markdown(r.timeline)
    assert "| c | local | " in table and "ran beside" in table


def test_a_failing_trial_is_a_failed_result_and_its_server_is_stopped(host, emulator):
    settings, ws, launcher = host(2)
    from omnitune.tools.launch import ServeConfig

    def leaky(config: dict, gpus: list[int]) -> dict:
        if config["name"] == "bad":  # launches, then fails without stopping its server
            launcher.launch(ServeConfig.model_validate({"model": QWEN, "enforce_eager": True, "gpus": gpus}))
            raise RuntimeError("benchmark client broke")
        return measure_on(settings, ws, QWEN, WORKLOAD, {**strip(config), "gpus": gpus}, launcher=launcher)

    r = runner(settings, ws, launcher, run_one=leaky)
    results = r.run_many([(trial("bad"), 1), (trial("good"), 1), (trial("too big"), 3)])
    assert "benchmark client broke" in results[0]["error"] and results[1]["p50_s"]
    assert "needs 3 GPUs" in results[2]["error"]
    by = {p.trial: p for p in r.timeline}
    assert by["bad"].status == "failed" and by["good"].status == "done" and by["too big"].status == "not_placed"
    assert emulator_processes(emulator) == []
    assert all(v.state in ("stopped", "failed", "exited") for v in launcher.list())


def test_cancel_stops_every_running_server_and_starts_no_new_trial(host, emulator):
    settings, ws, launcher = host(2, faults={"hang_on": [1], "hang_s": 120})  # every first request hangs
    cancel = threading.Event()

    def cancel_when_both_serve() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(emulator.live_pids()) < 2:
            time.sleep(0.05)
        time.sleep(0.3)
        cancel.set()

    threading.Thread(target=cancel_when_both_serve, daemon=True).start()
    r = runner(settings, ws, launcher, cancelled=cancel.is_set)
    t0 = time.monotonic()
    with pytest.raises(TrialsCancelled):
        r.run_many([(trial(n), 1) for n in "abcd"])
    assert time.monotonic() - t0 < 100  # the hanging requests (120 s) were cut by stopping their servers
    by = {p.trial: p for p in r.timeline}
    assert {by["a"].status, by["b"].status} <= {"cancelled", "done", "failed"}
    assert by["c"].status == by["d"].status == "cancelled" and by["c"].started_at is None
    assert emulator_processes(emulator) == []


def test_trials_never_use_a_gpu_another_omnitune_server_holds(host, emulator):
    settings, ws, launcher = host(3)
    from omnitune.tools.launch import ServeConfig
    other = launcher.launch(ServeConfig.model_validate({"model": QWEN, "enforce_eager": True, "gpus": [1]})).server
    assert other is not None
    try:
        r = runner(settings, ws, launcher)
        results = r.run_many([(trial("x"), 1), (trial("y"), 1), (trial("z"), 1)])
        assert all(res.get("p50_s") for res in results)
        assert all(1 not in p.gpus for p in r.timeline)
        assert {v.state for v in launcher.list() if v.server.id == other.id} == {"running"}
    finally:
        launcher.stop(other.id)


def test_finalists_are_re_measured_alone(host):
    settings, ws, launcher = host(2)
    r = runner(settings, ws, launcher)
    screened = r.run_many([(trial("a"), 1), (trial("b"), 1)])
    alone = r.remeasure_alone([(trial("a"), 1), (trial("b"), 1)])
    side, solo = r.timeline[:2], r.timeline[2:]
    assert all(not p.alone for p in side) and all(p.alone and p.beside == [] for p in solo)
    assert all(res["p50_s"] for res in screened + alone)


# -- through tune_start -----------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_tune_start_runs_trials_side_by_side_and_ahead_and_says_which_benchmarks_ran_beside_another(emulator,
                                                                                                       tmp_path):
    from mcp import Client

    from omnitune.server.main import build_server
    from tests.test_tune import IMAGE, SRC
    emulator.write("cfg4_qwen_image")
    settings = emulator_settings(emulator, tmp_path, vllm_omni_source=SRC)
    with SharedGpuWatch(emulator.state_dir) as watch:
        async with Client(build_server(settings)) as client:
            job = await client.call_tool("tune_start", {"request": {"model": QWEN, "workload": IMAGE,
                                                                "max_parallel_trials": None}})
            final = (await client.call_tool("job_wait", {"job_id": job.structured_content["id"],
                                                         "timeout_s": 300})).structured_content
            servers = (await client.call_tool("list_servers", {})).structured_content["servers"]
    assert final["status"] == "completed", final["error"]
    assert watch.shared == []
    r = final["result"]
    # a multi-GPU layout wins (CFG parallel x SP on 4 GPUs quiet; usp=3 is within a busy machine's noise of it)
    assert r["winner"]["kind"] == "layout" and len(r["winner"]["gpus"]) >= 3, r["winner"]
    assert all(s["state"] == "stopped" for s in servers) and emulator_processes(emulator) == []
    ran = [p for p in r["timeline"] if p["started_at"] and p["ended_at"]]
    together = [(p, q) for i, p in enumerate(ran) for q in ran[i + 1:]
                if p["started_at"] < q["ended_at"] and q["started_at"] < p["ended_at"]]
    assert together and all(set(p["gpus"]).isdisjoint(q["gpus"]) for p, q in together)
    # benchmarks overlap only between trials that ran side by side (disjoint GPUs), and every figure measured
    # beside another benchmark says so (and whether it was measured again alone) in the outcome's reason
    measured = [p for p in r["timeline"] if p["bench_beside"] is not None]
    assert len(measured) >= 4 and all(set(p["bench_beside"]) <= set(p["beside"]) for p in measured)
    by_name = {o["name"]: o for o in r["candidates"]}
    assert all("beside" in (by_name[p["trial"]]["reason"] or "") for p in measured
               if p["bench_beside"] and p["trial"] in by_name and by_name[p["trial"]]["status"] == "measured")
    assert any(p["ahead"] and p["status"] == "done" for p in r["timeline"])  # started before the search asked
    assert any("side by side" in n for n in r["notes"]) and "| ran beside |" in open(r["report"]).read()
    assert r["launches"] == sum(1 for p in r["timeline"] if p["started_at"])  # every launch is in the timeline



@pytest.mark.anyio
async def test_cancelling_a_tune_while_trials_run_side_by_side_stops_them_all(emulator, tmp_path):
    import anyio
    from mcp import Client

    from omnitune.server.main import build_server
    from tests.test_tune import IMAGE, SRC
    emulator.write("cfg4_qwen_image", cost={"startup_s": 1.0})  # a launch long enough to be caught in
    settings = emulator_settings(emulator, tmp_path, vllm_omni_source=SRC)
    async with Client(build_server(settings)) as client:
        job = await client.call_tool("tune_start", {"request": {"model": QWEN, "workload": IMAGE,
                                                                "max_parallel_trials": None}})
        job_id = job.structured_content["id"]
        with anyio.fail_after(240):
            while len(emulator_processes(emulator)) < 2 * 2:  # servers side by side (2-GPU ones: 2 processes)
                await anyio.sleep(0.02)
        await client.call_tool("job_cancel", {"job_id": job_id})
        final = (await client.call_tool("job_wait", {"job_id": job_id, "timeout_s": 120})).structured_content
        servers = (await client.call_tool("list_servers", {})).structured_content["servers"]
    assert final["status"] == "cancelled", final
    assert emulator_processes(emulator) == []
    assert all(s["state"] in ("stopped", "failed") for s in servers)
    gpus = [g for s in servers for g in s["server"]["gpus"]]  # cancelled while several ran, on disjoint GPUs
    assert len(servers) >= 2 and len(gpus) == len(set(gpus))
