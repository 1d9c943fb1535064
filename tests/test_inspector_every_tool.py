"""A real third-party client, the MCP Inspector CLI, lists and calls every tool, reads every resource, gets the prompt.

Each call talks streamable HTTP to one real `omnitune` process (the Inspector over stdio is in
tests/test_protocol_stdio.py), with the emulator as `vllm`, simulated GPUs, and the real vllm-omni 0.30.0 source to
inspect. Some calls run the CLI as a command, options and all (`cli`); the rest run through the same CLI's client
functions, several calls to one Node process (`batch`, tests/inspector_batch.mjs: a Node start costs more CPU than
a call). Every result is held against what its tool declares: a tool with an output schema returns structured
content valid under it (a spec-strict client refuses anything else), and the picture tool, which declares none,
returns image content only.
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
        url = f"http://127.0.0.1:{port}/mcp"

        def run(argv: list[str], stdin: str | None = None) -> str:
            proc = subprocess.run([node, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                                  input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)
            assert proc.returncode == 0, proc.stderr[-2000:]
            return proc.stdout

        def call(*args: str) -> dict:  # one call, the CLI as a command
            return json.loads(run([str(client), url, "--transport", "http", *args]))

        def batch(calls: list[dict]) -> list[dict]:  # the CLI's client functions, one Node process
            out = json.loads(run([str(REPO / "tests" / "inspector_batch.mjs"), str(client), url], json.dumps(calls)))
            assert len(out) == len(calls) and all("result" in o for o in out), out
            return [o["result"] for o in out]
        call.runs = runs  # type: ignore[attr-defined]
        call.batch = batch  # type: ignore[attr-defined]
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


def tool_args(args: dict) -> dict[str, str]:
    """As the CLI's ``--tool-arg key=value`` gives them: strings, converted by the Inspector by the tool's schema."""
    return {k: json.dumps(v) if not isinstance(v, str) else v for k, v in args.items()}


def tool(cli, name: str, **args) -> dict:
    flags = []
    for key, value in tool_args(args).items():
        flags += ["--tool-arg", f"{key}={value}"]
    return cli("--method", "tools/call", "--tool-name", name, *flags)


def call_of(name: str, **args) -> dict:
    return {"method": "tools/call", "toolName": name, "toolArg": tool_args(args)}


def text(result: dict) -> str:
    return result["content"][0]["text"]


def test_every_tool_can_be_listed_and_called(inspect_cli):
    schemas = {t["name"]: t.get("outputSchema") for t in inspect_cli("--method", "tools/list")["tools"]}
    listed = set(schemas)
    called = set()

    def ok(name: str, result: dict):
        assert not result.get("isError"), text(result)
        declared(result, schemas[name])
        called.add(name)
        return result.get("structuredContent", result["content"])

    def refused(name: str, needle: str, result: dict) -> None:
        assert result.get("isError") is True and needle in text(result), text(result)
        called.add(name)

    # the CLI as a command: nested JSON objects, lists and booleans through its --tool-arg option
    dry_launch = tool(inspect_cli, "launch_server", config={"model": ZIMAGE, "usp": 2}, dry_run=True)
    assert ok("launch_server", dry_launch)["argv"][-2:] == ["--usp", "2"]
    dry = ok("benchmark", tool(inspect_cli, "benchmark", base_url="http://127.0.0.1:9", gpus=[0],
                               workload={"sizes": ["64x64"]}, dry_run=True))
    assert dry["plan"][0]["phase"] == "warmup" and {r["path"] for r in dry["plan"]} == {"/v1/images/generations"}
    assert any(r["phase"] == "measured" for r in dry["plan"])

    base, cand = inspect_cli.runs
    first = inspect_cli.batch([
        call_of("detect_gpus"), call_of("inspect_model_capabilities", model="ZImagePipeline"),
        call_of("list_servers"), call_of("server_logs", server_id="srv-none"),
        call_of("stop_server", server_id="srv-none"),
        call_of("benchmark_start", base_url="http://127.0.0.1:9", gpus=[0],
                workload={"sizes": ["64x64"], "measured": 1}),
        call_of("compare_outputs", baseline_run="run-x", candidate_run="run-y"),
        call_of("compare_outputs", baseline_run=base, candidate_run=cand)])
    assert ok("detect_gpus", first[0])["gpu_count"] == 2
    assert ok("inspect_model_capabilities", first[1])["pipeline_class"] == "ZImagePipeline"
    assert ok("list_servers", first[2])["servers"] == []
    refused("server_logs", "no server 'srv-none'", first[3])
    refused("stop_server", "no server 'srv-none'", first[4])
    job = ok("benchmark_start", first[5])
    refused("compare_outputs", "no benchmark run 'run-x'", first[6])
    cmp = ok("compare_outputs", first[7])
    assert cmp["verdict"] != "identical" and cmp["pictures"][0]["picture"] == "contact_sheet"

    links = [{k: link[k] for k in ("picture", "id", "pair") if link[k] is not None} for link in cmp["pictures"][:3]]
    second = inspect_cli.batch([
        call_of("job_status", job_id=job["id"]), call_of("job_wait", job_id=job["id"], timeout_s=1),
        call_of("job_cancel", job_id=job["id"]), *(call_of("show_picture", **args) for args in links),
        call_of("show_picture", picture="contact_sheet", id="cmp-none")])
    assert ok("job_status", second[0])["kind"] == "benchmark"
    assert ok("job_wait", second[1])["id"] == job["id"]
    assert ok("job_cancel", second[2])["id"] == job["id"]
    for result in second[3:3 + len(links)]:
        images = ok("show_picture", result)
        assert [c["type"] for c in images] == ["image"] and images[0]["mimeType"] == "image/png"
        assert base64.b64decode(images[0]["data"]).startswith(b"\x89PNG")
    refused("show_picture", "no comparison 'cmp-none'", second[-1])

    missing = sorted(listed - called)  # tools added later (plan, tune, ...): at least a protocol-level call
    for name, result in zip(missing, inspect_cli.batch([call_of(name) for name in missing]), strict=True):
        assert "content" in result
        declared(result, schemas[name])
        called.add(name)
    assert called == listed


def test_every_resource_can_be_read_and_the_prompt_fetched(inspect_cli):
    statics = inspect_cli("--method", "resources/list")["resources"]
    base, cand = inspect_cli.runs
    templates, compared, prompts = inspect_cli.batch([
        {"method": "resources/templates/list"}, call_of("compare_outputs", baseline_run=base, candidate_run=cand),
        {"method": "prompts/list"}])
    templates = templates["resourceTemplates"]
    uris = [r["uri"] for r in statics]
    pictures = [t for t in templates if t["mimeType"] == "image/png"]
    for t in templates:
        if t not in pictures:
            uris.append(t["uriTemplate"].split("{?")[0].replace("{pipeline}", "QwenImagePipeline"))
    assert len(uris) >= 6 and [t["uriTemplate"] for t in pictures] == ["omnitune://pictures/{id}/{picture}"]
    links = compared["structuredContent"]["pictures"][:2]  # the contact sheet and the worst pair, as linked
    blob = inspect_cli("--method", "resources/read", "--uri", links[0]["uri"])["contents"]  # the CLI's --uri
    read = [blob, *(r["contents"] for r in inspect_cli.batch(
        [{"method": "resources/read", "uri": u} for u in [links[1]["uri"], *uris]]))]
    for link, contents in zip(links, read[:2], strict=True):
        assert len(contents) == 1 and contents[0]["mimeType"] == "image/png" and contents[0]["uri"] == link["uri"]
        assert base64.b64decode(contents[0]["blob"]).startswith(b"\x89PNG")
    for uri, contents in zip(uris, read[2:], strict=True):
        assert contents and len(contents[0]["text"]) > 50, uri
    assert [p["name"] for p in prompts["prompts"]] == ["tune_diffusion_serving"]
    got = inspect_cli("--method", "prompts/get", "--prompt-name", "tune_diffusion_serving", "--prompt-args",
                      "model=Qwen/Qwen-Image")
    assert "detect_gpus" in got["messages"][0]["content"]["text"]
