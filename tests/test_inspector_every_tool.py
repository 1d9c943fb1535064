"""A real third-party client, the MCP Inspector CLI, lists and calls every tool, reads every resource, gets the prompt.

Each call is a fresh Inspector CLI process talking streamable HTTP to one real `omnitune` process (the
Inspector over stdio is in tests/test_protocol_stdio.py), with the emulator as `vllm`, simulated GPUs, and the
real vllm-omni 0.30.0 source to inspect. Every result is held against what its tool declares: a tool with
an output schema returns structured content valid under it (a spec-strict client refuses anything else), and the
picture tool, which declares none, returns image content only.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest

from omnitune.tools.settings import Settings
from omnitune.tools.workspace import Workspace
from tests.conftest import FAKE_NVML_DIR, FIXTURE_MODELS, H200, write_scenario
from tests.emulator.harness import make_vllm_shim
from tests.http_helpers import omnitune_http
from tests.synthetic_runs import record_run, shots

pytestmark = pytest.mark.slow(seconds=70)  # scheduled first: see tests/conftest.py

REPO = Path(__file__).resolve().parents[1]
INSPECTOR = "@modelcontextprotocol/inspector@0.15.0"
ZIMAGE = str(FIXTURE_MODELS / "tiny-zimage")


@pytest.fixture(scope="module")
def inspect_cli(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inspector")
    npx = shutil.which("npx")
    assert npx, "Node.js/npx is required (CI machines have it)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNITUNE_")}
    env["npm_config_yes"] = "true"
    served = {"PYTHONPATH": os.pathsep.join([str(FAKE_NVML_DIR), str(REPO)]),
              "VLLM_EMU_SCENARIO": str(write_scenario(tmp / "scenario.json", gpus=[H200, H200])),
              "OMNITUNE_VLLM": str(make_vllm_shim(tmp / "bin")), "OMNITUNE_MODEL_ROOTS": str(FIXTURE_MODELS),
              "OMNITUNE_VLLM_OMNI_SOURCE": str(REPO / ".venv" / "vllm-omni-src" / "0.30.0")}
    ws = Workspace.open(Settings.model_validate({"workspace": tmp / "ws"}))
    try:  # two recorded runs (real tables and PNGs) for compare_outputs to draw pictures of
        runs = [record_run(ws, shots(2, 1, 128, 96, noise)) for noise in (0.0, 4.0)]
    finally:
        ws.close()
    # npx fetches the pinned Inspector once; then each call runs its CLI client directly: `mcp-inspector --cli`
    # (cli/build/cli.js) only parses its options and starts `node cli/build/index.js` with them, and npx's own
    # package resolution costs more CPU than a call.
    found = subprocess.run([npx, "-y", f"--package={INSPECTOR}", "-c", "command -v mcp-inspector"], cwd=tmp, env=env,
                           capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert found.returncode == 0 and found.stdout.strip(), found.stderr[-2000:]
    client = Path(found.stdout.strip()).resolve().with_name("index.js")
    node = shutil.which("node")
    assert client.is_file() and node, client
    with omnitune_http(tmp, "127.0.0.1", env_extra=served) as (port, _):
        def call(*args: str) -> dict:
            proc = subprocess.run([node, str(client), f"http://127.0.0.1:{port}/mcp", "--transport", "http", *args],
                                  cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                                  stdin=subprocess.DEVNULL)
            assert proc.returncode == 0, proc.stderr[-2000:]
            return json.loads(proc.stdout)
        call.runs = runs  # type: ignore[attr-defined]
        yield call


def declared(result: dict, schema: dict | None) -> None:
    """The result is what the tool declares: structured content valid under its schema, or content only."""
    if result.get("isError"):
        return  # an error is content (text) either way
    if schema is None:
        assert "structuredContent" not in result and result["content"], result
    else:
        assert "structuredContent" in result, "declares an output schema but returned no structured content"
        jsonschema.validate(result["structuredContent"], schema)


def tool(cli, name: str, **args) -> dict:
    flags = []
    for key, value in args.items():
        flags += ["--tool-arg", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    return cli("--method", "tools/call", "--tool-name", name, *flags)


def text(result: dict) -> str:
    return result["content"][0]["text"]


def test_every_tool_can_be_listed_and_called(inspect_cli):
    schemas = {t["name"]: t.get("outputSchema") for t in inspect_cli("--method", "tools/list")["tools"]}
    listed = set(schemas)
    called = set()

    def ok(name, **args):
        result = tool(inspect_cli, name, **args)
        assert not result.get("isError"), text(result)
        declared(result, schemas[name])
        called.add(name)
        return result.get("structuredContent", result["content"])

    def refused(name, needle, **args):
        result = tool(inspect_cli, name, **args)
        assert result.get("isError") is True and needle in text(result), text(result)
        called.add(name)

    assert ok("detect_gpus")["gpu_count"] == 2
    assert ok("inspect_model_capabilities", model="ZImagePipeline")["pipeline_class"] == "ZImagePipeline"
    assert ok("launch_server", config={"model": ZIMAGE, "usp": 2}, dry_run=True)["argv"][-2:] == ["--usp", "2"]
    assert ok("list_servers")["servers"] == []
    refused("server_logs", "no server 'srv-none'", server_id="srv-none")
    refused("stop_server", "no server 'srv-none'", server_id="srv-none")
    dry = ok("benchmark", base_url="http://127.0.0.1:9", gpus=[0], workload={"sizes": ["64x64"]}, dry_run=True)
    assert dry["plan"][0]["phase"] == "warmup" and {r["path"] for r in dry["plan"]} == {"/v1/images/generations"}
    assert any(r["phase"] == "measured" for r in dry["plan"])
    job = ok("benchmark_start", base_url="http://127.0.0.1:9", gpus=[0], workload={"sizes": ["64x64"], "measured": 1})
    assert ok("job_status", job_id=job["id"])["kind"] == "benchmark"
    assert ok("job_wait", job_id=job["id"], timeout_s=1)["id"] == job["id"]
    assert ok("job_cancel", job_id=job["id"])["id"] == job["id"]
    refused("compare_outputs", "no benchmark run 'run-x'", baseline_run="run-x", candidate_run="run-y")
    base, cand = inspect_cli.runs
    cmp = ok("compare_outputs", baseline_run=base, candidate_run=cand)
    assert cmp["verdict"] != "identical" and cmp["pictures"][0]["picture"] == "contact_sheet"
    for link in cmp["pictures"][:3]:
        args = {k: link[k] for k in ("picture", "id", "pair") if link[k] is not None}
        images = ok("show_picture", **args)
        assert [c["type"] for c in images] == ["image"] and images[0]["mimeType"] == "image/png"
        assert base64.b64decode(images[0]["data"]).startswith(b"\x89PNG")
    refused("show_picture", "no comparison 'cmp-none'", picture="contact_sheet", id="cmp-none")
    missing = listed - called
    for name in sorted(missing):  # tools added later (plan, tune, ...): at least a protocol-level call
        result = tool(inspect_cli, name)
        assert "content" in result
        declared(result, schemas[name])
        called.add(name)
    assert called == listed


def test_every_resource_can_be_read_and_the_prompt_fetched(inspect_cli):
    statics = inspect_cli("--method", "resources/list")["resources"]
    templates = inspect_cli("--method", "resources/templates/list")["resourceTemplates"]
    uris = [r["uri"] for r in statics]
    pictures = [t for t in templates if t["mimeType"] == "image/png"]
    for t in templates:
        if t not in pictures:
            uris.append(t["uriTemplate"].split("{?")[0].replace("{pipeline}", "QwenImagePipeline"))
    assert len(uris) >= 6 and [t["uriTemplate"] for t in pictures] == ["omnitune://pictures/{id}/{picture}"]
    base, cand = inspect_cli.runs
    result = tool(inspect_cli, "compare_outputs", baseline_run=base, candidate_run=cand)["structuredContent"]
    for link in result["pictures"][:2]:  # the contact sheet and the worst pair, as linked from the result
        blob = inspect_cli("--method", "resources/read", "--uri", link["uri"])["contents"]
        assert len(blob) == 1 and blob[0]["mimeType"] == "image/png" and blob[0]["uri"] == link["uri"]
        assert base64.b64decode(blob[0]["blob"]).startswith(b"\x89PNG")
    for uri in uris:
        contents = inspect_cli("--method", "resources/read", "--uri", uri)["contents"]
        assert contents and len(contents[0]["text"]) > 50, uri
    prompts = inspect_cli("--method", "prompts/list")["prompts"]
    assert [p["name"] for p in prompts] == ["tune_diffusion_serving"]
    got = inspect_cli("--method", "prompts/get", "--prompt-name", "tune_diffusion_serving", "--prompt-args",
                      "model=Qwen/Qwen-Image")
    assert "detect_gpus" in got["messages"][0]["content"]["text"]
