"""The tune's search policy in memory: a fake trial runner over the emulator's world model, a real ledger.

No process and no clock: every figure a decision reads comes from the world's cost model, so each test
states the world and asserts the decisions (what was launched, what won, why the rest did not).
"""

from __future__ import annotations

import pytest

from omnitune.tools.settings import Settings
from omnitune.tools.tune.stats import p50_se
from omnitune.tools.workspace import Workspace
from tests.tune_fakes import WorldTrials, fake, load_world, policy

IMAGE = {"sizes": ["256x256"], "measured": 3, "warmup": 1, "num_inference_steps": 20}
VIDEO = {"task": "text-to-video", "sizes": ["256x256"], "measured": 3, "warmup": 1, "num_inference_steps": 4,
         "num_frames": 5, "fps": 8}
L4 = {"name": "NVIDIA L4", "memory_mib": 23034, "compute_capability": [8, 9]}
A100 = {"name": "NVIDIA A100-SXM4-80GB", "memory_mib": 81920, "compute_capability": [8, 0]}


@pytest.fixture
def ws(tmp_path):
    workspace = Workspace.open(Settings.model_validate({"workspace": tmp_path / "ws"}))
    yield workspace
    workspace.close()


def names(tuner) -> dict:
    return {o.name: o for o in tuner.outcomes}


def launched(tuner) -> list[str]:
    return [name for name, _ in fake(tuner).launched]


def test_native_fp8_stacked_recipe_first_and_compile_alone_not_needed(ws):
    t = policy(ws, load_world("image_fp8_compile"))
    best = t.run()
    assert best is not None and best.name == "compile+fp8"
    assert launched(t) == ["baseline", "compile+fp8"]
    assert names(t)["compile"].status == "not_needed" and t.ledger.launches == 2


def test_without_native_fp8_methods_are_added_one_at_a_time_within_noise_is_not_kept(ws):
    t = policy(ws, load_world("image_fp8_compile", gpus=[A100]))
    best = t.run()
    c = names(t)
    assert best is not None and best.name == "compile" and t.ledger.launches == 3
    assert c["compile+fp8"].status == "within_noise"  # weight-only fallback: no faster than compile


def test_cfg_parallel_times_ulysses_wins_on_four_gpus_and_tp_is_pruned_by_heads(ws):
    t = policy(ws, load_world("cfg4_qwen_image", model={"tp_divides": 3}))
    best = t.run()
    assert best is not None and best.name == "cfg_parallel_size=2xusp=2 (4 GPUs)"
    assert {p.name for p in t.plan.pruned} >= {"tensor_parallel_size=2", "tensor_parallel_size=4"}


def test_the_launch_budget_is_respected(ws):
    t = policy(ws, load_world("cfg4_qwen_image"), max_launches=2)
    t.run()
    assert t.ledger.launches == 2 and len(fake(t).launched) == 2
    assert any(o.status == "skipped_budget" and o.cause == "budget" for o in t.outcomes)


def test_a_video_model_that_only_fits_with_offload(ws):
    t = policy(ws, load_world("video_offload"), workload=VIDEO)
    best = t.run()
    c = names(t)
    assert c["baseline"].status == "failed" and c["baseline"].cause == "out_of_memory"
    assert c["baseline + layerwise offload"].status == "measured"
    assert t.baseline is c["baseline + layerwise offload"]
    assert best is not None and best.config.get("enable_layerwise_offload")


def test_a_memory_limit_rejects_what_peaks_over_it_and_fp8_can_drop_the_offload(ws):
    t = policy(ws, load_world("image_fp8_compile"), goal={"vram_limit_mib": 17000})
    best = t.run()
    c = names(t)
    assert c["baseline"].status == "over_memory" and "over the limit 17000 MiB" in (c["baseline"].reason or "")
    assert t.baseline is c["baseline + layerwise offload"]
    assert best is not None and best.name == "compile+fp8 without offload"
    assert best.peak_memory_mib and best.peak_memory_mib < 17000 and "enable_layerwise_offload" not in best.config
    assert all(o.peak_memory_mib is None or o.peak_memory_mib <= 17000 or o.status == "over_memory"
               for o in t.outcomes)


def test_a_model_too_big_for_one_gpu_even_offloaded_gets_the_fewest_gpus_that_fit(ws):
    # was an end-to-end test asserting a speed ratio read off a loaded clock (flaky); now decisions only
    world = load_world("video_offload", gpus=[L4, L4], model={"rejects": ["layerwise_offload", "cpu_offload"],
                                                              "dit_gib": 16.0}, cost={"tp_efficiency": 0.5})
    t = policy(ws, world, workload=VIDEO)
    best = t.run()
    c = names(t)
    assert c["baseline"].cause == "out_of_memory"
    assert not any(o.kind == "offload" for o in t.outcomes)  # the capability report says it refuses offload
    assert {"layerwise offload", "model-level offload"} <= {p.name for p in t.plan.pruned}
    assert t.baseline is c["baseline (TP 2)"] and c["baseline (TP 2)"].config["gpus"] == [0, 1]
    one = c["compile+fp8 on one GPU"]  # FP8 halves the DiT: one GPU is enough again, and beats TP 2
    assert one.status == "measured" and one.config["gpus"] == [0] and t.better(one, c["baseline (TP 2)"])
    assert best is not None and best.kind == "layout" and best.config["quantization"] == "fp8"
    assert best.config.get("tensor_parallel_size", 1) == 1 and best.config["gpus"] == [0, 1]


def test_lossy_sweep_flags_an_inert_threshold_and_stops_at_the_cliff(ws):
    t = policy(ws, load_world("lossy_cliff"), goal={"quality": "lossy"})
    best = t.run()
    c = names(t)
    assert c["tea_cache 0.05"].status == "inert"
    assert c["tea_cache 0.4"].status == "rejected_quality" and c["tea_cache 0.4"].verdict == "degraded"
    assert "tea_cache 0.6" not in c  # the sweep stopped at the cliff
    assert best is not None and best.name == "tea_cache 0.3" and best.verdict == "acceptable"
    steps, guidance = [o for o in t.outcomes if o.request_settings]
    assert steps.request_settings == {"num_inference_steps": 15} and steps.status == "rejected_quality"
    assert "stopped at the quality cliff" in (steps.reason or "")
    assert guidance.request_settings == {"guidance_scale": 1.0, "true_cfg_scale": 1.0}
    assert guidance.status == "rejected_quality"
    assert t.ledger.launches == 8  # baseline, compile+fp8, five thresholds, one server for steps and guidance


def test_a_second_tune_reuses_measured_configurations_instead_of_launching(ws):
    world = load_world("image_fp8_compile")
    first = policy(ws, world, job_id="tune-1")
    runner = fake(first)
    first.run()
    second = policy(ws, world, job_id="tune-2", runner=runner)
    assert second.run() is not None
    assert second.ledger.launches == 0 and len(runner.launched) == 2
    assert {o.status for o in second.outcomes} == {"reused", "not_needed"}


def test_a_resumed_tune_replays_its_records_and_launches_nothing_twice(ws):
    world = load_world("lossy_cliff")
    probe = policy(ws, world, job_id="probe", goal={"quality": "lossy"})
    dying = policy(ws, world, goal={"quality": "lossy"}, runner=WorldTrials(world, probe.req, fail_after=3))
    with pytest.raises(KeyboardInterrupt):
        dying.run()
    done = len(dying.outcomes)
    again = policy(ws, world, goal={"quality": "lossy"})
    best = again.run()
    assert best is not None and best.name == "tea_cache 0.3"
    assert [o.resumed for o in again.outcomes[:done]] == [True] * done
    assert not any(o.resumed for o in again.outcomes[done:])
    assert not set(launched(again)) & set(launched(dying))  # nothing measured twice
    assert again.ledger.launches == 8 and any(n.startswith("resumed:") for n in again.notes)


def test_the_median_error_shrugs_off_one_stalled_request():
    se = p50_se([0.50, 2.0, 0.51])  # one request stalled 1.5 s
    assert se is not None and se < 0.05 * 0.51
    assert p50_se([0.5]) is None
