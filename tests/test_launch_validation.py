"""Each validation rule refuses before any process starts; injection attempts stay inert."""

from __future__ import annotations

import pytest
from mcp import Client

from omnitune.server.main import build_server
from tests.conftest import FIXTURE_MODELS
from tests.launch_helpers import QWEN, WAN, ZIMAGE, emulator_processes, emulator_settings, world

pytestmark = pytest.mark.anyio


async def launch(emulator, tmp_path, config, gpus=2, scenario=None, dry_run=False, **settings):
    emulator.write(scenario or world(gpus))
    async with Client(build_server(emulator_settings(emulator, tmp_path, **settings))) as client:
        result = await client.call_tool("launch_server", {"config": config, "dry_run": dry_run})
        servers = (await client.call_tool("list_servers", {})).structured_content["servers"]
    return result, servers


@pytest.mark.parametrize("config, needle", [
    ({"model": QWEN, "usp": 2, "cfg_parallel_size": 2}, "world size usp 2 x ring 1 x cfg 2 x tp 1 = 4 needs 4 GPUs"),
    ({"model": QWEN, "gpus": [0, 5]}, "GPU index [5] does not exist"),
    ({"model": QWEN, "gpus": [1, 1], "usp": 2}, "repeats an index"),
    ({"model": QWEN, "usp": 2, "gpus": [1]}, "needs 2 GPUs but 1 were given"),
    ({"model": QWEN, "use_hsdp": True, "tensor_parallel_size": 2}, "HSDP cannot be combined with TP"),
    ({"model": WAN, "enable_cpu_offload": True, "enable_layerwise_offload": True}, "are both set"),
    ({"model": WAN, "enable_cpu_offload": True, "usp": 2}, "CPU offload is a single-GPU feature"),
    ({"model": WAN, "enable_layerwise_offload": True, "tensor_parallel_size": 2}, "cannot combine with tensor"),
    ({"model": QWEN, "cache_config": {"rel_l1_thresh": 0.2}}, "cache_config is set without cache_backend"),
    ({"model": QWEN, "cache_backend": "cache_dit", "cache_config": {"rel_l1_thresh": 0.2}},
     "do not belong to cache_dit"),
    ({"model": QWEN, "tensor_parallel_size": 2}, "does not divide the DiT's 3 attention heads"),
    ({"model": ZIMAGE, "extra_flags": {"--gguf-model": "x.gguf"}}, "--gguf-model is not a flag of the installed"),
    ({"model": ZIMAGE, "extra_flags": {"--enforce-eager": True}}, "duplicates a typed field"),
    ({"model": ZIMAGE, "extra_flags": {"--vae-fast-pth": "lossless"}}, "did you mean --vae-fast-path"),
])
async def test_invalid_configuration_is_refused_before_any_process_starts(emulator, tmp_path, config, needle):
    result, servers = await launch(emulator, tmp_path, config)
    text = result.content[0].text
    assert result.is_error is True and needle in text and "Fix:" in text
    assert servers == [] and emulator_processes(emulator) == []


async def test_no_gpu_is_refused_with_the_reason(emulator, tmp_path):
    result, servers = await launch(emulator, tmp_path, {"model": ZIMAGE}, scenario={"gpus": []})
    assert result.is_error and "no usable GPU" in result.content[0].text and servers == []


async def test_fp8_below_sm89_is_a_warning_not_an_error(emulator, tmp_path):
    a100 = {"name": "NVIDIA A100", "memory_mib": 81920, "compute_capability": [8, 0]}
    result, _ = await launch(emulator, tmp_path, {"model": ZIMAGE, "quantization": "fp8"},
                             scenario={"gpus": [a100]}, dry_run=True)
    assert result.is_error is False
    assert any("weight-only" in w for w in result.structured_content["warnings"])


async def test_a_valid_extra_flag_becomes_one_argv_element(emulator, tmp_path):
    result, _ = await launch(emulator, tmp_path, {"model": ZIMAGE, "extra_flags": {"--vae-fast-path": "lossless",
                                                                                  "--fa-deterministic": True}},
                             dry_run=True)
    argv = result.structured_content["argv"]
    assert argv[-2:] == ["--fa-deterministic", "--vae-fast-path=lossless"]


@pytest.mark.parametrize("model", ["--help", "Qwen/Qwen Image", "a;rm -rf /", "$(touch /tmp/pwned)", "x\ny",
                                   "org/name/extra"])
async def test_model_injection_is_rejected(emulator, tmp_path, model):
    result, servers = await launch(emulator, tmp_path, {"model": model}, dry_run=True)
    assert result.is_error is True and servers == []


async def test_a_model_folder_outside_the_allowed_roots_is_rejected(emulator, tmp_path):
    emulator.write(world(1))
    settings = emulator_settings(emulator, tmp_path).model_copy(update={"model_roots": [tmp_path / "models"]})
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("launch_server", {"config": {"model": ZIMAGE}, "dry_run": True})
    assert result.is_error and "outside the allowed model roots" in result.content[0].text


async def test_a_folder_without_model_index_is_rejected(emulator, tmp_path):
    (tmp_path / "not-a-model").mkdir()
    result, _ = await launch(emulator, tmp_path, {"model": str(tmp_path / "not-a-model")}, dry_run=True)
    assert result.is_error and "no model_index.json" in result.content[0].text


@pytest.mark.parametrize("value", ["; rm -rf /", "$(reboot)", "--port 1 --host 0.0.0.0", "a b c"])
async def test_hostile_flag_values_stay_one_inert_argv_element(emulator, tmp_path, value):
    result, _ = await launch(emulator, tmp_path, {"model": ZIMAGE, "extra_flags": {"--revision": value}},
                             dry_run=True)  # a free-text flag (--vae-fast-path has choices now checked)
    argv = result.structured_content["argv"]
    assert f"--revision={value}" in argv
    assert argv.count("--port") == 1 and argv[argv.index("--host") + 1] == "127.0.0.1"


@pytest.mark.parametrize("bad", [{"extra_flags": {"--x; ls": "1"}}, {"extra_flags": {"-x": "1"}},
                                 {"extra_flags": {"--vae-fast-path": "a\nb"}}, {"served_model_name": "a b"},
                                 {"served_model_name": "--port"}, {"cache_backend": "rm -rf"},
                                 {"cfg_parallel_size": 3}, {"usp": 0}, {"port": 22}, {"unknown_field": 1}])
async def test_malformed_fields_are_rejected_by_the_schema(emulator, tmp_path, bad):
    result, servers = await launch(emulator, tmp_path, {"model": ZIMAGE, **bad}, dry_run=True)
    assert result.is_error is True and servers == []


async def test_the_fixture_folder_passes_validation_as_a_local_model(emulator, tmp_path):
    result, _ = await launch(emulator, tmp_path, {"model": str(FIXTURE_MODELS / "tiny-wan")}, dry_run=True)
    assert result.is_error is False and result.structured_content["argv"][2] == str(FIXTURE_MODELS / "tiny-wan")


async def test_layerwise_offload_with_sequence_parallel_passes_the_gate(emulator, tmp_path):
    # vLLM-Omni 0.30.0 shards layerwise offload over the SP group (diffusion/offloader/base.py), so tune may try it
    result, servers = await launch(emulator, tmp_path, {"model": WAN, "enable_layerwise_offload": True, "usp": 2},
                                   dry_run=True)
    assert result.is_error is False, result.content
    assert "--enable-layerwise-offload" in result.structured_content["argv"] and servers == []
