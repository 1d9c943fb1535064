"""The emulator speaks vLLM-Omni 0.30.0's contract: every route against openapi.json, every flag of serve-args.json."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys

import httpx
import pytest
from jsonschema import Draft202012Validator

from tests.conftest import FIXTURE_MODELS, H200, REFERENCE
from tests.emulator import contract, flags
from tests.emulator.harness import make_emulator, start, wait_until

OPENAPI = json.loads((REFERENCE / "openapi.json").read_text())
ZIMAGE = str(FIXTURE_MODELS / "tiny-zimage")
WAN = str(FIXTURE_MODELS / "tiny-wan")
FAST = {"gpus": [H200], "cost": {"startup_s": 0.05, "step_s_per_megapixel": 0.001, "compile_penalty_s": 0.0}}


def check(schema: dict, instance) -> None:
    """Validate against a schema of openapi.json, its $refs resolved in the document."""
    Draft202012Validator({**schema, "components": OPENAPI["components"]}).validate(instance)


def request_schema(path: str, method: str, ctype: str) -> dict:
    return OPENAPI["paths"][path][method]["requestBody"]["content"][ctype]["schema"]


def check_response(path: str, method: str, response: httpx.Response) -> None:
    """The status is declared for the route, and a JSON body matches the schema declared for it."""
    declared = OPENAPI["paths"][path][method]["responses"]
    assert str(response.status_code) in declared, (path, response.status_code, response.text[:200])
    content = declared[str(response.status_code)].get("content", {})
    ctype = response.headers["content-type"].split(";")[0]
    if ctype == "application/json" and response.content:
        check(content["application/json"]["schema"], response.json())
    elif ctype == "text/plain":
        assert response.headers["content-type"] in content
        check(content[response.headers["content-type"]]["schema"], response.text)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    emu = make_emulator(tmp_path_factory.mktemp("emu"))
    emu.write(FAST, model={"kind": "video"})
    server = start(emu, WAN)
    yield server
    server.stop()


def test_health_models_and_metrics_match_the_document(served):
    with httpx.Client(base_url=served.url) as c:
        for path in ("/health", "/v1/models", "/metrics"):
            r = c.get(path)
            assert r.status_code == 200
            check_response(path, "get", r)
        assert c.get("/v1/models").json()["data"][0]["id"] == WAN


def test_image_generation_request_and_response_validate_and_the_png_has_the_asked_size(served):
    from PIL import Image
    body = {"prompt": "a red fox", "size": "48x32", "n": 2, "seed": 5, "num_inference_steps": 4,
            "guidance_scale": 4.0, "negative_prompt": "blur", "response_format": "b64_json"}
    check(request_schema("/v1/images/generations", "post", "application/json"), body)
    r = httpx.post(f"{served.url}/v1/images/generations", json=body, timeout=30)
    assert r.status_code == 200
    check_response("/v1/images/generations", "post", r)
    out = r.json()
    assert len(out["data"]) == 2 and out["metrics"]["peak_memory_mb"] > 0
    assert set(out["metrics"]["stage_durations"]) == {"queue_wait_ms", "stage_0_gen_ms"}  # as on a real H200
    assert "inference_time_s" not in out["metrics"]  # 0.30.0's image metrics: stage_durations, peak_memory_mb
    img = Image.open(io.BytesIO(base64.b64decode(out["data"][0]["b64_json"])))
    assert img.format == "PNG" and img.size == (48, 32)


@pytest.mark.parametrize("body, param", [
    ({"size": "16x16"}, "body.prompt"),                          # no prompt
    ({"prompt": "x", "n": 11}, "body.n"),                        # n above 10
    ({"prompt": "x", "num_inference_steps": 0}, "body.num_inference_steps"),
    ({"prompt": "x", "size": "big"}, None),                      # size is not WxH (checked by the handler)
])
def test_image_request_errors_are_400_with_an_openai_error_object_not_422(served, body, param):
    r = httpx.post(f"{served.url}/v1/images/generations", json=body, timeout=30)
    assert r.status_code == 400  # vLLM's RequestValidationError handler, not FastAPI's 422
    check_response("/v1/images/generations", "post", r)
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "Bad Request"
    assert error["code"] == 400 and error["param"] == param


def test_async_video_job_goes_queued_to_completed_and_its_content_is_a_real_mp4(served):
    import av
    form = {"prompt": "waves", "size": "32x32", "num_frames": 5, "fps": 8, "num_inference_steps": 2, "seed": 3}
    check(request_schema("/v1/videos", "post", "multipart/form-data"), form)
    with httpx.Client(base_url=served.url, timeout=30) as c:
        r = c.post("/v1/videos", data={k: str(v) for k, v in form.items()}, files={"unused": ("", b"")})
        assert r.status_code == 200
        check_response("/v1/videos", "post", r)
        job = r.json()
        assert job["status"] in ("queued", "in_progress")
        seen = set()
        status = c.get(f"/v1/videos/{job['id']}")
        for _ in range(2000):  # bounded poll on the job's own status
            status = c.get(f"/v1/videos/{job['id']}")
            check_response("/v1/videos/{video_id}", "get", status)
            check({"$ref": "#/components/schemas/VideoResponse"}, status.json())
            seen.add(status.json()["status"])
            if status.json()["status"] in ("completed", "failed"):
                break
        final = status.json()
        assert final["status"] == "completed", final
        assert final["inference_time_s"] > 0 and final["peak_memory_mb"] > 0 and final["progress"] == 100
        content = c.get(f"/v1/videos/{job['id']}/content")
        assert content.status_code == 200 and content.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(content.content)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 5 and (frames[0].width, frames[0].height) == (32, 32)


def test_sync_video_returns_the_mp4_with_timing_headers(served):
    form = {"prompt": "rain", "size": "32x32", "num_frames": "3", "fps": "8", "num_inference_steps": "2", "seed": "1"}
    r = httpx.post(f"{served.url}/v1/videos/sync", data=form, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    assert r.content[4:8] == b"ftyp"
    assert float(r.headers["X-Inference-Time-S"]) > 0 and float(r.headers["X-Peak-Memory-MB"]) > 0
    assert isinstance(json.loads(r.headers["X-Stage-Durations"]), dict)


def test_video_errors_have_the_documented_shape(served):
    with httpx.Client(base_url=served.url, timeout=30) as c:
        missing = c.post("/v1/videos", data={"size": "32x32"})
        assert missing.status_code == 400 and missing.json()["error"]["param"] == "body.prompt"
        check_response("/v1/videos", "post", missing)


def port_state(port: int) -> tuple[str, str]:
    """(connect, bind) for a local port: whether a TCP connect is accepted and whether the port is free."""
    import errno
    import socket
    with socket.socket() as s:
        s.settimeout(1.0)
        try:
            s.connect(("127.0.0.1", port))
            connect = "accepted"
        except ConnectionRefusedError:
            connect = "refused"
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            bind = "free"
        except OSError as exc:
            bind = "in use" if exc.errno == errno.EADDRINUSE else str(exc)
    return connect, bind


def test_while_loading_the_port_is_bound_but_refuses_connections_as_the_real_server(tmp_path):
    """Real 0.30.0 (reference/.../logs/*.json port timelines): bound from setup_server on, listening only after
    the engine is up; so no HTTP answer at all while loading."""
    emu = make_emulator(tmp_path)
    emu.write(FAST, cost={"startup_s": 1.5})
    server = start(emu, ZIMAGE, wait=False)
    try:
        assert wait_until(lambda: port_state(server.port) == ("refused", "in use"), timeout=20)
        with httpx.Client(base_url=server.url, timeout=2) as c:
            with pytest.raises(httpx.ConnectError):
                c.get("/health")
            r = wait_until(lambda: _answer(c, "/health"), timeout=20)
            assert r.status_code == 200 and r.json() == {"status": "healthy"}
    finally:
        server.stop()


def test_a_hung_load_never_accepts_a_connection(tmp_path):
    emu = make_emulator(tmp_path)
    emu.write(FAST, faults={"startup_hang": True})
    server = start(emu, ZIMAGE, wait=False)
    try:
        assert wait_until(lambda: port_state(server.port) == ("refused", "in use"), timeout=20)
        wait_until(lambda: "Starting vLLM-Omni" in server.log.read_text(), timeout=20)
        assert port_state(server.port) == ("refused", "in use") and server.proc.poll() is None
    finally:
        server.stop()


def test_opt_in_503_mode_answers_health_and_posts_with_503_while_loading(tmp_path):
    emu = make_emulator(tmp_path)
    emu.write(FAST, faults={"startup_hang": True}, api={"while_loading": "503"})
    server = start(emu, ZIMAGE, wait=False)
    try:
        with httpx.Client(base_url=server.url, timeout=5) as c:
            r = wait_until(lambda: _answer(c, "/health"))
            assert r.status_code == 503
            post = c.post("/v1/images/generations", json={"prompt": "x"})
            assert post.status_code == 503 and post.json()["error"]["type"] == "Service Unavailable"
            check_response("/v1/images/generations", "post", post)
    finally:
        server.stop()


def _answer(client: httpx.Client, path: str):
    try:
        return client.get(path)
    except httpx.TransportError:
        return None


# -- flags ------------------------------------------------------------------------------------------------------

def valid_value(action: dict) -> list[str]:
    """A value the real parser accepts for this action (choices first, then by declared type)."""
    if action["action"] in ("BooleanOptionalAction", "_StoreTrueAction", "_StoreFalseAction"):
        return []
    if action.get("choices"):
        return [str(action["choices"][0])]
    by_type = {"int": "2", "float": "0.5", "human_readable_int": "1k", "human_readable_int_or_auto": "1k",
               "_nonneg_finite_float": "1.5", "<lambda>": "0"}
    return [by_type.get(str(action.get("type")), "{}" if "config" in action["dest"] or action.get("type") in (
        "loads", "_json_object", "parse_dataclass", "union_dict_and_str", "_parse_type",
        "_parse_stage_overrides") else "1")]


# --model takes the positional slot (FlexibleArgumentParser moves its value to the front): contract case model_as_option
FLAG_CASES = [(flag, action) for action in flags.actions() if action.get("flags") and action["action"] != "_HelpAction"
              for flag in action["flags"] if flag != "--model"]


def test_every_flag_and_alias_of_serve_args_is_accepted_with_a_valid_value():
    assert len(FLAG_CASES) > 390
    for flag, action in FLAG_CASES:
        ns = flags.parse(["serve", ZIMAGE, "--omni", flag, *valid_value(action)])
        assert hasattr(ns, action["dest"]), flag
        assert ns.model_tag == ZIMAGE


def test_aliases_land_on_the_same_setting():
    assert flags.parse(["serve", "m", "--omni", "--usp", "2"]).ulysses_degree == 2
    assert flags.parse(["serve", "m", "--omni", "--ulysses-degree", "2"]).ulysses_degree == 2
    assert flags.parse(["serve", "m", "--omni", "--ring", "2"]).ring_degree == 2
    assert flags.parse(["serve", "m", "--omni", "-tp", "4"]).tensor_parallel_size == 4


def test_the_shim_accepts_a_combined_command_and_serves(tmp_path):
    emu = make_emulator(tmp_path)
    emu.write({**FAST, "gpus": [H200] * 2})
    server = start(emu, ZIMAGE, "--usp", "2", "--enforce-eager", "--vae-use-slicing", "--quantization", "fp8",
                   "--served-model-name", "z", "--cache-backend", "cache_dit", "--cache-config",
                   '{"residual_diff_threshold": 0.1}')
    try:
        assert httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"] == "z"
    finally:
        server.stop()


INVALID = [
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--port", "eighty"], "argument --port: invalid int value: 'eighty'"),
    (["--usp", "1.5"], "invalid int value: '1.5'"),
    (["--ring"], "argument --ring/--ring-degree: expected one argument"),
    (["--dtype", "float8"], "argument --dtype: invalid choice: 'float8'"),
    (["--tensor-parallel-size"], "expected one argument"),
    (["--cfg-parallel-size", "two"], "invalid int value: 'two'"),
    (["--enforce-eager=yes"], "ignored explicit argument 'yes'"),
    (["--gpu-memory-utilization", "lots"], "invalid float value: 'lots'"),
    (["--max-model-len", "x1"], "argument --max-model-len: invalid human_readable_int_or_auto value: 'x1'"),
]


def test_ten_invalid_invocations_fail_like_argparse(tmp_path):
    emu = make_emulator(tmp_path)
    env = {**__import__("os").environ, **emu.env}
    procs = [(subprocess.Popen([str(emu.shim), "serve", ZIMAGE, "--omni", *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=env, text=True), needle) for argv, needle in INVALID]
    for proc, needle in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, (needle, err)
        if needle.startswith("unrecognized"):  # reported by the top-level `vllm` parser, as the real CLI
            assert err.startswith("usage: vllm [-h] [-v] {serve,bench} ...\nvllm: error: "), err
        else:
            assert err.startswith("usage: vllm serve [model_tag] --omni [options]"), err
            assert "vllm serve: error: " in err, err
        assert needle in err, err
        assert out == ""


def test_help_all_and_version_answer_as_the_real_cli(tmp_path):
    emu = make_emulator(tmp_path)
    env = {**__import__("os").environ, **emu.env}
    done = subprocess.run([str(emu.shim), "serve", "--omni", "--help=all"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0 and done.stdout == (REFERENCE / "serve-help-all.txt").read_text()
    version = subprocess.run([str(emu.shim), "--version"], capture_output=True, text=True, timeout=60, env=env)
    assert version.returncode == 0 and version.stdout.strip() == "0.30.0"


def test_help_exits_zero_with_the_flags(tmp_path):
    emu = make_emulator(tmp_path)
    done = subprocess.run([str(emu.shim), "serve", "--omni", "--help"], capture_output=True, text=True, timeout=60,
                          env={**__import__("os").environ, **emu.env})
    assert done.returncode == 0 and "--ulysses-degree" in done.stdout and "--cache-backend" in done.stdout
    assert sys.executable in emu.shim.read_text().splitlines()[0]


def test_video_job_routes_answer_as_the_real_api_server_for_failed_running_missing_and_deleted_jobs(tmp_path):
    emu = make_emulator(tmp_path)
    emu.write(FAST, faults={"error_500_on": [1], "hang_on": [2], "hang_s": 5})
    server = start(emu, WAN)
    form = {"prompt": "p", "size": "32x32", "num_frames": "2", "num_inference_steps": "2", "seed": "1"}
    try:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            failed = c.post("/v1/videos", data=form).json()["id"]
            status = wait_until(lambda: (r := c.get(f"/v1/videos/{failed}")).json()["status"] == "failed" and r)
            assert status.status_code == 500 and status.json()["error"]["code"] == 500  # status = the error code
            check({"$ref": "#/components/schemas/VideoResponse"}, status.json())
            assert c.get(f"/v1/videos/{failed}/content").status_code == 422
            running = c.post("/v1/videos", data=form).json()["id"]
            wait_until(lambda: c.get(f"/v1/videos/{running}").json()["status"] == "in_progress")
            assert c.get(f"/v1/videos/{running}/content").status_code == 404
            assert c.delete(f"/v1/videos/{running}").status_code == 409
            listed = c.get("/v1/videos", params={"limit": 1})
            check_response("/v1/videos", "get", listed)
            assert len(listed.json()["data"]) == 1 and listed.json()["has_more"] is True
            assert {j["id"] for j in c.get("/v1/videos").json()["data"]} == {failed, running}
            deleted = c.delete(f"/v1/videos/{failed}")
            check_response("/v1/videos/{video_id}", "delete", deleted)
            assert deleted.json() == {"id": failed, "object": "video.deleted", "deleted": True}
            missing = c.get(f"/v1/videos/{failed}")
            assert missing.status_code == 404 and missing.json()["error"]["message"] == "Video not found"
            check({"$ref": "#/components/schemas/ErrorResponse"}, missing.json())
            assert c.get("/version").json() == {"version": "0.30.0"}
    finally:
        server.stop()


# -- the real 0.30.0's recorded answers (live against the real stack: tests/test_emulator_real_contract.py) ------

RECORDED = json.loads(contract.RECORDED.read_text())


def test_every_startup_case_is_decided_as_the_recorded_real_cli_and_config_build():
    emulated = contract.emulator_startup(ZIMAGE)
    problems = [p for case_id, real in RECORDED["startup"].items()
                for p in contract.startup_problems(case_id, real, emulated[case_id])]
    assert len(RECORDED["startup"]) >= 35 and problems == []


def test_every_http_case_is_answered_as_the_recorded_real_app(tmp_path):
    emu = make_emulator(tmp_path)
    emu.write(FAST)
    server = start(emu, ZIMAGE)
    try:
        # The recording was made from a checkout outside the folders vLLM hides in messages; a checkout under /tmp or
        # /root (CI's clone) gets '<path>' instead of the folder, as the real server would say there too.
        emulated = json.loads(json.dumps(contract.emulator_http(server.url)).replace(ZIMAGE, "MODEL")
                              .replace("'<path>'", "'MODEL'"))
    finally:
        server.stop()
    problems = [p for case_id, real in RECORDED["http"].items()
                for p in contract.http_problems(case_id, real, emulated[case_id])]
    assert len(RECORDED["http"]) >= 20 and problems == []


def test_error_messages_hide_file_paths_as_the_real_server_does(tmp_path):
    """vLLM 0.30.0 hides absolute paths under system folders (here the model folder under /tmp) in error messages:
    found when CI ran from a clone under /tmp and the real stack answered '<path>' where the emulator named it."""
    import shutil
    model = tmp_path / "models" / "tiny-zimage"
    shutil.copytree(ZIMAGE, model)
    emu = make_emulator(tmp_path / "emu")
    emu.write(FAST)
    server = start(emu, str(model))
    try:
        r = httpx.post(server.url + "/v1/images/generations", timeout=10,
                       json={"model": "some-other-model", "prompt": "a cat", "size": "64x64"})
    finally:
        server.stop()
    assert str(tmp_path).startswith("/tmp/")
    assert r.status_code == 400 and r.json()["error"]["message"] == (
        "Model mismatch: request specifies 'some-other-model' but server is running '<path>'.")
