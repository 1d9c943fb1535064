"""An agent that sees only what Claude Code hands the model still runs the whole guide and sees every picture.

Claude Code gives the model a result's ``structuredContent`` when it carries one and drops the ``content`` array
(text and images); only a result without structured content reaches it as content. The scripted agent here
decides every next call from that view alone, on the emulator: detect, inspect, launch, benchmark, compare,
tune, report. It fetches every picture a result links, through ``show_picture`` and as a resource, and decodes
the PNG bytes. Every call runs with its default wait and must return within 45 s (clients cut calls after
about a minute).
"""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.types import BlobResourceContents, ContentBlock, ImageContent, TextContent
from PIL import Image

from omnitune.server.main import build_server
from tests.launch_helpers import ZIMAGE, emulator_settings, world

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parents[1]
SRC = REPO / ".venv" / "vllm-omni-src" / "0.30.0"
CALL_LIMIT_S = 45.0
WORKLOAD = {"sizes": ["256x256"], "measured": 4, "warmup": 1, "num_inference_steps": 20, "seeds": [1, 2],
            "prompt_count": 2}


class StructuredOnlyAgent:
    """Calls tools as Claude Code does: the model gets structuredContent if present, else the content blocks."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.calls: list[tuple[str, float]] = []
        self.progress: dict[str, int] = {}
        self.links: dict[str, dict] = {}  # uri -> PictureLink, every one any result showed

    async def _call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any] | list[ContentBlock]:
        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            self.progress[tool] = self.progress.get(tool, 0) + 1

        started = time.perf_counter()
        result = await self.client.call_tool(tool, arguments, progress_callback=on_progress)
        self.calls.append((tool, time.perf_counter() - started))
        assert not result.is_error, f"{tool}: {result.content}"
        if result.structured_content is not None:
            texts = [b.text for b in result.content if isinstance(b, TextContent)]
            # the text part (dropped by Claude Code) says nothing the structured part does not
            assert [json.loads(t) for t in texts] == [result.structured_content], f"{tool}: text differs"
            assert all(isinstance(b, TextContent) for b in result.content), f"{tool}: pictures beside data"
            self._collect(result.structured_content)
            return result.structured_content  # all the model gets: the content array is dropped
        return list(result.content)

    async def call(self, tool: str, **arguments: Any) -> dict[str, Any]:
        seen = await self._call(tool, arguments)
        assert isinstance(seen, dict), f"{tool} returned no structured content"
        return seen

    async def look(self, tool: str, **arguments: Any) -> list[ContentBlock]:
        seen = await self._call(tool, arguments)
        assert isinstance(seen, list), f"{tool} returned structured content: its pictures would be dropped"
        return seen

    def _collect(self, value: Any) -> None:
        if isinstance(value, dict):
            if {"picture", "id", "uri"} <= value.keys():
                self.links[value["uri"]] = value
            for v in value.values():
                self._collect(v)
        elif isinstance(value, list):
            for v in value:
                self._collect(v)


def decode_png(data: bytes) -> tuple[int, int]:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as img:
        img.load()  # decodes every pixel: a truncated or corrupt PNG raises here
        return img.size


async def test_an_agent_seeing_only_structured_content_runs_the_guide_and_sees_every_picture(emulator, tmp_path):
    emulator.write("image_fp8_compile")
    settings = emulator_settings(emulator, tmp_path, vllm_omni_source=SRC)
    async with Client(build_server(settings)) as client:
        listed = {t.name: t for t in (await client.list_tools()).tools}
        agent = StructuredOnlyAgent(client)

        gpus = await agent.call("detect_gpus")
        assert gpus["gpu_count"] == 1 and gpus["gpus"][0]["fp8_native"] is True
        caps = await agent.call("inspect_model_capabilities", model=ZIMAGE)
        assert caps["methods"]["fp8"]["status"] == "supported"

        runs = {}
        for name, config in (("baseline", {"enforce_eager": True}), ("fp8", {"quantization": "fp8"})):
            server = (await agent.call("launch_server", config={"model": ZIMAGE, **config}))["server"]
            bench = await agent.call("benchmark", server_id=server["id"], workload=WORKLOAD)
            assert bench["status"] == "completed" and bench["summary"]["requests_ok"] == 4
            assert [p["picture"] for p in bench["pictures"]] == ["run_grid"] and "compare_outputs" in bench["next_step"]
            runs[name] = bench["run_id"]
            assert (await agent.call("stop_server", server_id=server["id"]))["stopped"] is True
        assert agent.progress.get("benchmark", 0) >= 2 * 5  # a notification per request, warm-ups included

        cmp = await agent.call("compare_outputs", baseline_run=runs["baseline"], candidate_run=runs["fp8"])
        assert cmp["verdict"] in ("identical", "lossless-equivalent", "acceptable") and cmp["pairs"] == 4
        assert cmp["trade_off"]["speedup_p50"] and cmp["next_step"]
        assert [p["picture"] for p in cmp["pictures"][:2]] == ["contact_sheet", "worst_pair"]
        assert {p["pair"] for p in cmp["pictures"][2:]} == {0, 1, 2, 3}

        # A job's handle says how to follow it: state names of the tasks extension, poll hint, next step. (A
        # benchmark of a port nothing listens on may fail before its handle is written: it is looked at below.)
        long = await agent.call("benchmark_start", base_url="http://127.0.0.1:9", gpus=[0], workload=WORKLOAD)
        assert long["kind"] == "benchmark" and long["status"] in ("working", "failed")

        job = await agent.call("tune_start", request={"model": ZIMAGE, "workload": WORKLOAD, "max_launches": 3})
        assert job["status"] == "working" and job["next_poll_at"] >= job["created_at"]
        assert job["poll_interval_ms"] > 0 and "job_wait" in job["next_step"]
        while job["status"] == "working":
            job = await agent.call("job_wait", job_id=job["id"])
        assert job["status"] == "completed", job["error"]
        tune = job["result"]
        assert tune["winner"] and "vllm serve" in tune["command"] and "--quantization fp8" in tune["command"]
        assert [p["picture"] for p in job["pictures"]] == ["pareto"] and "show_picture" in job["next_step"]
        failed = await agent.call("job_wait", job_id=long["id"])  # nothing listens on port 9: failed, with the fix
        assert failed["status"] == "failed" and failed["error"] and failed["poll_interval_ms"] is None

        # Every picture any result linked arrives as image content (show_picture) and as a resource, same size.
        kinds = {link["picture"] for link in agent.links.values()}
        assert kinds == {"contact_sheet", "worst_pair", "pair", "run_grid", "pareto"}
        for uri, link in agent.links.items():
            shown = await agent.look("show_picture", picture=link["picture"], id=link["id"], pair=link["pair"])
            assert len(shown) == 1 and isinstance(shown[0], ImageContent) and shown[0].mime_type == "image/png"
            width, height = decode_png(base64.b64decode(shown[0].data))
            assert min(width, height) >= 64 and max(width, height) <= 1568
            contents = (await client.read_resource(uri)).contents
            assert len(contents) == 1 and isinstance(contents[0], BlobResourceContents)
            assert contents[0].mime_type == "image/png"
            assert decode_png(base64.b64decode(contents[0].blob)) == (width, height), uri

    assert listed["show_picture"].output_schema is None  # image content only: nothing for Claude Code to drop
    assert all(t.output_schema for name, t in listed.items() if name != "show_picture")
    slow = [(tool, round(s, 1)) for tool, s in agent.calls if s >= CALL_LIMIT_S]
    assert not slow, f"calls over {CALL_LIMIT_S} s with default arguments: {slow}"
    assert {tool for tool, _ in agent.calls} >= {"detect_gpus", "inspect_model_capabilities", "launch_server",
                                                 "benchmark", "compare_outputs", "tune_start", "job_wait",
                                                 "show_picture"}


async def test_blocking_calls_default_to_a_wait_under_the_clients_limit(settings):
    async with Client(build_server(settings)) as client:
        tools = {t.name: t.input_schema["properties"] for t in (await client.list_tools()).tools}
    assert tools["benchmark"]["wait_s"]["default"] == tools["job_wait"]["timeout_s"]["default"] == 40


async def test_a_server_still_loading_after_the_wait_comes_back_as_a_launch_job_to_follow(emulator, tmp_path):
    emulator.write(world(1, cost={"startup_s": 4.0}))
    async with Client(build_server(emulator_settings(emulator, tmp_path))) as client:
        agent = StructuredOnlyAgent(client)
        started = await agent.call("launch_server", config={"model": ZIMAGE, "enforce_eager": True}, wait_s=1)
        assert started["job"]["status"] == "working" and started["job"]["kind"] == "launch"
        assert started["server"]["status"] == "starting" and "--enforce-eager" in started["argv"]
        assert "job_wait" in started["next_step"] and agent.progress.get("launch_server", 0) >= 1
        done = await agent.call("job_wait", job_id=started["job"]["id"])
        assert done["status"] == "completed" and done["result"]["server"]["id"] == started["server"]["id"]
        assert done["result"]["server"]["status"] == "running" and "server.id" in done["next_step"]
        refused = await client.call_tool("launch_server", {"config": {"model": ZIMAGE, "tensor_parallel_size": 7}})
        error = refused.content[0]
        assert refused.is_error and isinstance(error, TextContent) and "Fix:" in error.text  # refused at once
        await agent.call("stop_server", server_id=started["server"]["id"])


async def test_picture_selectors_that_name_nothing_are_refused_with_the_fix(settings):
    from omnitune.tools.workspace import Workspace
    from tests.synthetic_runs import record_run, shots
    ws = Workspace.open(settings)
    try:
        run = record_run(ws, shots(1, 1, 64, 64))
        twin = record_run(ws, shots(1, 1, 64, 64))  # a run against itself is refused: compare two of the same
    finally:
        ws.close()
    async with Client(build_server(settings)) as client:
        same = (await client.call_tool("compare_outputs", {"baseline_run": run, "candidate_run": twin}))
        cmp_id = same.structured_content["id"]
        worst = await client.call_tool("show_picture", {"picture": "worst_pair", "id": cmp_id})  # identical: pair 0
        grid = await client.call_tool("show_picture", {"picture": "run_grid", "id": run})
        no_pair = await client.call_tool("show_picture", {"picture": "pair", "id": cmp_id})
        far_pair = await client.call_tool("show_picture", {"picture": "pair", "id": cmp_id, "pair": 7})
        no_tune = await client.call_tool("show_picture", {"picture": "pareto", "id": "tune-nope"})
        with pytest.raises(Exception, match="no picture named 'secrets'"):
            await client.read_resource(f"omnitune://pictures/{cmp_id}/secrets")
        with pytest.raises(Exception):  # a traversal never reaches the file system
            await client.read_resource("omnitune://pictures/../contact_sheet")
    for ok in (worst, grid):
        assert not ok.is_error and isinstance(ok.content[0], ImageContent)
        decode_png(base64.b64decode(ok.content[0].data))
    for refused, needle in ((no_pair, "needs pair=<index>"), (far_pair, "no picture of pair 7"),
                            (no_tune, "no tune job 'tune-nope'")):
        text = refused.content[0]
        assert refused.is_error and isinstance(text, TextContent) and needle in text.text and "Fix:" in text.text
