"""A scripted agent session: a real MCP client drives omnitune over stdio through the whole guide.

It runs against the vLLM-Omni emulator (tests/emulator), so it works on any machine: see omnitune work
before pointing it at GPUs. Steps: detect_gpus -> inspect_model_capabilities -> baseline (enforce-eager)
-> lossless candidates (compile, FP8, CFG parallel on 2 GPUs) -> a lossy candidate (TeaCache) compared with
the baseline -> an automatic tune (tune_start, followed with job_wait) -> a markdown report with the winning
`vllm serve` command. Like Claude Code, it reads only each result's structured content, every call with its
default wait (each returns within 45 s), and it looks at pictures through show_picture.

    .venv/bin/python examples/agent_session.py [--report report.md] [--pictures docs/]

--pictures writes the TeaCache comparison's contact sheet and the tune's Pareto plot there (README shows them).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters
from mcp.types import ImageContent

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FIXTURES = (REPO / "tests" / "fixtures" / "models").resolve()
H200 = {"name": "NVIDIA H200", "memory_mib": 143771, "compute_capability": [9, 0]}
# The emulated world: two H200s and a CFG image model whose costs follow the guide's figures.
WORLD = {"gpus": [H200, H200], "model": {"dit_gib": 40.0, "text_encoder_gib": 8.0, "uses_cfg": True},
         "cost": {"startup_s": 0.3, "step_s_per_megapixel": 0.1, "compile_penalty_s": 0.4}}
WORKLOAD = {"sizes": ["256x256"], "num_inference_steps": 20, "measured": 6, "warmup": 1, "seeds": [7, 8],
            "prompt_count": 3}
TUNE_LAUNCHES = 12
CANDIDATES = [  # (name, config changes, lossy?)
    ("baseline (eager)", {"enforce_eager": True}, False),
    ("torch.compile", {}, False),
    ("compile + FP8", {"quantization": "fp8"}, False),
    ("compile + FP8 + CFG parallel (2 GPUs)", {"quantization": "fp8", "cfg_parallel_size": 2}, False),
    ("... + TeaCache 0.2", {"quantization": "fp8", "cfg_parallel_size": 2, "cache_backend": "tea_cache",
                            "cache_config": {"rel_l1_thresh": 0.2}}, True),
]


def log(text: str) -> None:
    sys.stderr.write(text + "\n")


async def session(workdir: Path) -> tuple[str, dict[str, bytes]]:
    from tests.emulator.harness import FAKE_NVML, make_vllm_shim

    shim = make_vllm_shim(workdir / "bin")
    (workdir / "scenario.json").write_text(json.dumps(WORLD))
    (workdir / "state").mkdir()
    model = str(FIXTURES / "tiny-qwenimage")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("OMNITUNE_")},
           "OMNITUNE_WORKSPACE": str(workdir / "ws"), "OMNITUNE_VLLM": str(shim),
           "OMNITUNE_MODEL_ROOTS": str(FIXTURES), "VLLM_EMU_SCENARIO": str(workdir / "scenario.json"),
           "VLLM_EMU_STATE_DIR": str(workdir / "state"), "PYTHONPATH": f"{FAKE_NVML}{os.pathsep}{REPO}"}
    src = REPO / ".venv" / "vllm-omni-src" / "0.30.0"
    if src.is_dir():
        env["OMNITUNE_VLLM_OMNI_SOURCE"] = str(src)
    params = StdioServerParameters(command=sys.executable, args=["-m", "omnitune.server.main"], env=env, cwd=str(REPO))
    async with Client(params) as client:
        tools = {t.name for t in (await client.list_tools()).tools}

        async def send(tool: str, arguments: dict):
            t = time.perf_counter()
            result = await client.call_tool(tool, arguments)
            log(f"[{time.perf_counter() - t:6.2f} s] {tool} -> {'ERROR' if result.is_error else 'ok'}")
            if result.is_error:
                raise RuntimeError(f"{tool}: {result.content}")
            return result

        async def call(tool: str, **arguments) -> dict:
            structured = (await send(tool, arguments)).structured_content  # all Claude Code hands the model
            assert structured is not None, f"{tool} returned no structured content"
            return structured

        async def picture(link: dict) -> bytes:
            args = {k: link[k] for k in ("picture", "id", "pair") if link.get(k) is not None}
            args["max_side"] = 1200  # README size
            (image,) = (await send("show_picture", args)).content  # no structured content: the image is the answer
            assert isinstance(image, ImageContent), image
            return base64.b64decode(image.data)

        gpus = await call("detect_gpus")
        gpu = gpus["gpus"][0]
        lines = [f"Hardware: {gpus['gpu_count']} x {gpu['name']} (SM {gpu['compute_capability']},"
                 f" fp8_native={gpu['fp8_native']})"]
        if "inspect_model_capabilities" in tools:
            caps = await call("inspect_model_capabilities", model=model)
            supported = [k for k, v in caps["methods"].items() if v["status"] == "supported"]
            lines.append(f"Model: {caps.get('pipeline_class')} / {caps.get('dit_class')}; "
                         f"supported: {', '.join(supported)}")
        rows: list[dict] = []
        baseline: dict | None = None
        pictures: dict[str, bytes] = {}
        for name, changes, lossy in CANDIDATES:
            launched = await call("launch_server", config={"model": model, **changes})
            job = launched.get("job")
            while job and job["status"] == "working":  # the model was still loading after the call's wait
                job = await call("job_wait", job_id=job["id"])
            if job and job["status"] != "completed":
                raise RuntimeError(f"launch {job['id']} {job['status']}: {job['error']}")
            launched = job["result"] if job else launched
            server = launched["server"]
            result = await call("benchmark", server_id=server["id"], workload=WORKLOAD)
            while result["status"] == "running":  # a run longer than the call's wait continues as a job
                job = await call("job_wait", job_id=result["job_id"])
                result = job["result"] if job["status"] != "working" else result
            await call("stop_server", server_id=server["id"])
            s = result["summary"]
            row = {"name": name, "command": launched["command"], "p50": s["latency"]["p50_s"],
                   "throughput": s["throughput_images_per_s"], "run_id": s["run_id"], "lossy": lossy,
                   "peak_mib": max(g["memory_peak_mib"] for g in s["gpus"]["gpus"]), "verdict": "baseline"}
            if baseline is None:
                baseline = row
            elif "compare_outputs" in tools:
                cmp = await call("compare_outputs", baseline_run=baseline["run_id"], candidate_run=row["run_id"])
                row["verdict"] = cmp.get("verdict", "?")
                pictures["contact-sheet"] = await picture(cmp["pictures"][0])
            else:
                row["verdict"] = "not compared"
            rows.append(row)
        assert baseline is not None
        good = [r for r in rows if r["verdict"] in ("baseline", "identical", "lossless-equivalent", "acceptable")]
        best = min(good, key=lambda r: r["p50"])
        job = await call("tune_start", request={"model": model, "workload": WORKLOAD, "max_launches": TUNE_LAUNCHES,
                                                "goal": {"quality": "lossy", "quality_floor": "acceptable"}})
        while job["status"] == "working":
            job = await call("job_wait", job_id=job["id"])  # returns within 40 s; the tune runs on meanwhile
        if job["status"] != "completed":
            raise RuntimeError(f"tune {job['id']} {job['status']}: {job['error']}")
        tune = job["result"]
        pictures["pareto"] = await picture(job["pictures"][0])
    out = ["# omnitune example session", "", *lines, "",
           "| configuration | p50 latency (s) | speed-up | images/s | peak MiB/GPU | quality vs baseline |",
           "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        out.append(f"| {r['name']} | {r['p50']:.3f} | {baseline['p50'] / r['p50']:.2f}x | {r['throughput']:.2f} | "
                   f"{r['peak_mib']:.0f} | {r['verdict']} |")
    out += ["", f"Winner: **{best['name']}**, {baseline['p50'] / best['p50']:.2f}x faster than the baseline at p50.",
            "",
            "```bash", best["command"].replace(str(workdir / "bin" / "vllm"), "vllm"), "```", "",
            f"Automatic tune (`tune_start`, {tune['launches']} launches): winner **{tune['winner']['name']}**, "
            f"{tune['winner']['speedup_vs_baseline']:.2f}x faster than its baseline at p50.", "",
            "```bash", tune["command"], "```", ""]
    return "\n".join(out), pictures


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--report", type=Path, help="Also write the report here.")
    p.add_argument("--pictures", type=Path, help="Write example-contact-sheet.png and example-pareto.png here.")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="omnitune-example-") as tmp:
        report, pictures = anyio.run(session, Path(tmp))
    report = report.replace(str(FIXTURES), "<fixtures>")
    if args.report:
        args.report.write_text(report)
    if args.pictures:
        for name, png in pictures.items():
            (args.pictures / f"example-{name}.png").write_bytes(png)
    sys.stdout.write(report)


if __name__ == "__main__":
    main()
