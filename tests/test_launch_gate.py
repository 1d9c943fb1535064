"""The launch gate of issue 15: each defect reproduced through the MCP client, then refused or spelled right."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from mcp import Client
from mcp.types import TextContent, TextResourceContents

from omnitune.server.main import build_server
from omnitune.tools.capabilities.flags import shipped
from omnitune.tools.gpus import GpuReport
from omnitune.tools.launch.config import ServeConfig
from omnitune.tools.launch.validate import validate
from omnitune.tools.settings import Settings
from tests.conftest import FIXTURE_MODELS
from tests.launch_helpers import QWEN, WAN, ZIMAGE, emulator_processes, emulator_settings, world

pytestmark = pytest.mark.anyio
LOGS = Path(__file__).resolve().parent / "data" / "real-logs"


def _text(result) -> str:
    content = result.content[0]
    assert isinstance(content, TextContent)
    return content.text


async def dry(emulator, tmp_path, config, gpus=2, **settings):
    emulator.write(world(gpus))
    async with Client(build_server(emulator_settings(emulator, tmp_path, **settings))) as client:
        return await client.call_tool("launch_server", {"config": config, "dry_run": True})


async def test_false_on_a_boolean_optional_flag_becomes_its_no_form(emulator, tmp_path):
    result = await dry(emulator, tmp_path, {"model": ZIMAGE, "extra_flags": {"--diffusion-compile-dynamic": False}})
    argv = result.structured_content["argv"]
    assert "--no-diffusion-compile-dynamic" in argv and not any(a.startswith("--diffusion-compile") for a in argv)


@pytest.mark.parametrize("flag, value", [("--no-enforce-eager", True), ("--no-enable-expert-parallel", True),
                                         ("--ulysses-degree", 2), ("--ring-degree", 2)])
async def test_other_spellings_of_typed_fields_are_refused(emulator, tmp_path, flag, value):
    result = await dry(emulator, tmp_path, {"model": ZIMAGE, "extra_flags": {flag: value}})
    assert result.is_error and "duplicates a typed field" in _text(result)


@pytest.mark.parametrize("config, gpus, needle", [
    ({"extra_flags": {"--num-gpus": 2}}, 1, "= 2 needs 2 GPUs"),
    ({"usp": 2, "extra_flags": {"--data-parallel-size": 2}}, 2, "= 4 needs 4 GPUs"),
    ({"extra_flags": {"--pipeline-parallel-size": 2}}, 1, "= 2 needs 2 GPUs"),
    ({"use_hsdp": True, "extra_flags": {"--hsdp-shard-size": 4}}, 2, "= 4 needs 4 GPUs"),
    ({"use_hsdp": True}, 2, "Cannot auto-calculate hsdp_shard_size"),
    ({"usp": 2, "extra_flags": {"--num-gpus": 3}}, 4, "not divisible by the non-data-parallel size 2"),
    ({"quantization": "fp8", "extra_flags": {"--diffusion-quantization-config": '{"method": "fp8"}'}}, 1,
     "cannot both be provided"),
])
async def test_every_flag_that_changes_the_world_size_is_counted(emulator, tmp_path, config, gpus, needle):
    result = await dry(emulator, tmp_path, {"model": QWEN, **config}, gpus=gpus)
    assert result.is_error and needle in _text(result) and "Fix:" in _text(result)
    assert emulator_processes(emulator) == []


@pytest.mark.parametrize("config, devices", [
    ({"extra_flags": {"--num-gpus": 2}}, "0,1"),
    ({"use_hsdp": True, "extra_flags": {"--hsdp-shard-size": 2}}, "0,1"),
    ({"usp": 2, "extra_flags": {"--data-parallel-size": 2}}, "0,1,2,3"),
])
async def test_the_counted_world_gets_its_gpus(emulator, tmp_path, config, devices):
    result = await dry(emulator, tmp_path, {"model": QWEN, **config}, gpus=4)
    assert result.is_error is False, _text(result)
    assert result.structured_content["env"]["CUDA_VISIBLE_DEVICES"] == devices


async def test_in_engine_data_parallel_is_warned_to_add_no_throughput(emulator, tmp_path):
    """0.30.0's DP ranks run each request together (only distributed layerwise offload splits requests)."""
    from omnitune.tools.launch.world import world as world_of
    dp = await dry(emulator, tmp_path, {"model": QWEN, "extra_flags": {"--data-parallel-size": 2}}, gpus=2)
    assert dp.is_error is False and any("for throughput run replicas" in w
                                         for w in dp.structured_content["warnings"])
    assert "runs each request on all 2" in (world_of(ServeConfig(model=QWEN, extra_flags={"--num-gpus": 4},
                                                                 usp=2)).warning or "")
    assert world_of(ServeConfig(model=QWEN, enable_layerwise_offload=True,
                                extra_flags={"--data-parallel-size": 2})).warning is None
    assert world_of(ServeConfig(model=QWEN, usp=2)).warning is None


@pytest.mark.parametrize("flags, needle", [
    ({"--vae-fast-path": True}, "needs a value"),
    ({"--vae-fast-path": "fast"}, "is not one of its choices"),
    ({"--num-gpus": "two"}, "is not a valid int"),
    ({"--additional-config": "{not json"}, "is not a valid"),
    ({"--diffusion-compile-dynamic": "true"}, "is a switch and takes no value"),
    ({"--fa-deterministic": "true"}, "is a switch and takes no value"),
    ({"--vae-use-ema": ""}, "not a flag"),
    ({"--fa-deterministic": False}, "false cannot be expressed"),
    ({"--lora-backend": "distill"}, "requires --lora-path"),
    ({"--omni-heartbeat-timeout": 0}, "must be > 0"),
])
async def test_extra_flag_values_are_checked_like_the_real_parser(emulator, tmp_path, flags, needle):
    result = await dry(emulator, tmp_path, {"model": ZIMAGE, "extra_flags": flags})
    assert result.is_error and needle in _text(result), _text(result)


@pytest.mark.parametrize("flags, needle", [
    ({"--trust-remote-code": True}, "is unsafe"), ({"--worker-cls": "x.Y"}, "is unsafe"),
    ({"--data-parallel-address": "0.0.0.0"}, "is unsafe"), ({"--allowed-local-media-path": "/"}, "is unsafe"),
    ({"--download-dir": "/tmp/x"}, "is unsafe"), ({"--uds": "/tmp/s"}, "is not allowed"),
    ({"--headless": True}, "is not allowed"), ({"--config": "/tmp/a.yaml"}, "is not allowed"),
])
async def test_flags_that_defeat_safety_or_accounting_are_refused(emulator, tmp_path, flags, needle):
    result = await dry(emulator, tmp_path, {"model": ZIMAGE, "extra_flags": flags})
    assert result.is_error and needle in _text(result) and "Fix:" in _text(result)


async def test_an_unsafe_flag_passes_only_with_the_explicit_opt_in(emulator, tmp_path):
    cfg = {"model": ZIMAGE, "extra_flags": {"--trust-remote-code": True}, "allow_unsafe_flags": ["--trust-remote-code"]}
    result = await dry(emulator, tmp_path, cfg)
    assert result.is_error is False and "--trust-remote-code" in result.structured_content["argv"]
    forbidden = await dry(emulator, tmp_path, {"model": ZIMAGE, "extra_flags": {"--headless": True},
                                               "allow_unsafe_flags": ["--headless"]})
    assert forbidden.is_error  # no opt-in for a server omnitune could never reach


async def test_a_vae_patch_size_above_the_world_size_is_a_warning_not_a_refusal(emulator, tmp_path):
    result = await dry(emulator, tmp_path, {"model": WAN, "vae_patch_parallel_size": 2})
    assert result.is_error is False
    assert any("clamps it to 1" in w for w in result.structured_content["warnings"])


async def test_without_a_serving_python_the_result_says_rules_checked_it(emulator, tmp_path):
    result = await dry(emulator, tmp_path, {"model": ZIMAGE})
    pre = result.structured_content["preflight"]
    assert pre["source"] == "rules" and "OMNITUNE_SERVING_PYTHON" in pre["reason"]
    assert any(w.startswith("preflight:") for w in result.structured_content["warnings"])


async def test_the_serve_flags_resource_is_the_catalogue_without_fragments(tmp_path):
    src = Path(__file__).resolve().parents[1] / ".venv" / "vllm-omni-src" / "0.30.0" / "vllm_omni"
    async with Client(build_server(Settings(workspace=tmp_path / "ws", vllm_omni_source=src))) as client:
        res = await client.read_resource("omnitune://serve-flags")
    content = res.contents[0]
    assert isinstance(content, TextResourceContents)
    data = json.loads(content.text)
    flags = set(data["flags"])
    assert data["catalogue"]["--vae-fast-path"]["choices"] == ["off", "lossless", "channels_last"]
    assert data["catalogue"]["--diffusion-compile-dynamic"]["negatable"] is True
    shipped = json.loads((Path(__file__).resolve().parents[1] / "resources" / "vllm_serve_args.json").read_text())
    assert flags == {f for a in shipped["actions"] for f in a.get("flags", [])}
    assert not {"--diffusion-", "--data-", "--json-arg"} & flags and all(not f.endswith("-") for f in flags)


async def test_a_real_cpu_only_failure_log_reports_its_cause_first(emulator, tmp_path):
    fake = tmp_path / "bin" / "vllm"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\ncat '{LOGS / 'vllm-omni-0.30.0-cpu-set-device.log'}'\nexit 1\n")
    fake.chmod(0o755)
    emulator.write(world(1))
    settings = emulator_settings(emulator, tmp_path).model_copy(update={"vllm": str(fake)})
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("launch_server", {"config": {"model": ZIMAGE}})
    text = _text(result)
    first = text.splitlines()[0]
    assert result.is_error and "no_gpu" in first and "NotImplementedError" in first and "set_device" in first
    assert "\x1b[" not in text and "unsupported_feature" not in text and "drop the feature" not in text


def test_the_device_count_failure_is_its_own_class():
    from omnitune.tools.launch import process
    cause, line, report = process.failure(LOGS / "vllm-omni-0.30.0-cpu-4-devices.log", 1)
    assert cause == "no_gpu" and "requires 4 device(s)" in line and report.startswith("cause: ValueError")


def _report(**methods):
    return SimpleNamespace(pipeline_class="P", cache_backends=None, constraints=[],
                           methods={k: SimpleNamespace(status=v, evidence=["x.py:1"], notes="") for k, v in
                                    methods.items()})


def _validate(config: dict, report) -> tuple[list[str], list[str]]:
    gpus = GpuReport.model_validate({"available": True, "host": {
        "cpu_cores_logical": 2, "cpu_cores_physical": 2, "ram_total_mib": 1, "ram_available_mib": 1, "workspace": "/w",
        "workspace_disk_free_mib": 1}, "gpus": [
        {"index": i, "name": "H200", "memory_total_mib": 143771, "memory_used_mib": 0} for i in range(4)]})
    r = validate(Settings(model_roots=[FIXTURE_MODELS]), ServeConfig(**config), gpus, report, shipped(None))
    return r.errors, r.warnings


def test_capability_statuses_decide_error_or_warning():
    errors, _ = _validate({"model": WAN, "usp": 2}, _report(ulysses_sp="rejected"))
    assert any("rejected" in e and "raises" in e for e in errors)
    errors, warnings = _validate({"model": WAN, "cfg_parallel_size": 2}, _report(cfg_parallel="unsupported"))
    assert errors == [] and any("starts but ignores it" in w for w in warnings)


def test_capability_constraints_and_the_zimage_head_key_are_honoured():
    errors, _ = _validate({"model": ZIMAGE, "tensor_parallel_size": 4}, _report())
    assert any("2 attention heads" in e and "n_heads" in e for e in errors)
    one_of = SimpleNamespace(kind="one_of", parameter="tensor_parallel_size", values=[1, 2], value=None,
                             description="TP sizes", evidence=["m.py:9"])
    report = _report()
    report.constraints = [one_of]
    errors, _ = _validate({"model": WAN, "tensor_parallel_size": 4}, report)
    assert any("not one of the sizes this model allows [1, 2]" in e for e in errors)
    strict = SimpleNamespace(kind="divides", parameter="ulysses_degree", value=3, values=None,
                             description="ulysses_degree must divide the heads in strict mode", evidence=["u.py:516"])
    report.constraints = [strict]
    errors, _ = _validate({"model": QWEN, "usp": 2}, report)
    assert any("usp 2 must divide 3" in e for e in errors)
    errors, _ = _validate({"model": QWEN, "usp": 2, "extra_flags": {"--ulysses-mode": "advanced_uaa"}}, report)
    assert errors == []


async def test_a_cold_serving_environment_never_holds_the_launch_past_its_bound(emulator, tmp_path, monkeypatch):
    import sys
    import time

    from omnitune.tools.launch import gate
    from omnitune.tools.serving import preflight
    fake = tmp_path / "serve-env" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    # Answers the (cheap) version probe like a Python without vLLM; as the worker it never answers (a cold import).
    fake.write_text(f"#!/bin/sh\nif [ \"$1\" = \"-c\" ]; then exec {sys.executable} \"$@\"; fi\nexec sleep 120\n")
    fake.chmod(0o755)
    monkeypatch.setattr(gate, "PREFLIGHT_WAIT_S", 1.5)
    started = time.monotonic()
    try:
        result = await dry(emulator, tmp_path, {"model": ZIMAGE}, serving_python=fake)
        took = time.monotonic() - started
        pre = result.structured_content["preflight"]
        assert result.is_error is False and pre["source"] == "rules" and "did not answer within 2 s" in pre["reason"]
        assert took < 30
        worker = preflight.worker_for(fake)
        assert worker.proc is not None and worker.proc.poll() is None  # still warming for the next launch
    finally:
        preflight.close_all()
    assert worker.proc is None
