"""The emulator against the REAL vLLM 0.30.0 + vLLM-Omni 0.30.0: same argv, same HTTP requests, same answers.

The real stack is found through OMNITUNE_REAL_VLLM_VENV (default ~/.cache/omnitune/real-vllm-0.30.0, installed by
tests/install_real_vllm.sh). All real answers come from one real Python process per session (importing vLLM takes
~35 s or more): the real parser, OmniServeCommand.validate and the real diffusion config build for every startup
case, and the real FastAPI app driven in process for every HTTP case. A later run on the same machine with the same
probe, cases, fixture and real venv reads them from ~/.cache/omnitune/real-answers (``contract.answers_key``).
Without the real venv these tests FAIL: the contract must not silently go unchecked.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import FIXTURE_MODELS, H200
from tests.emulator import contract
from tests.emulator.harness import make_emulator, start

pytestmark = pytest.mark.slow(seconds=50)  # scheduled first: see tests/conftest.py

MODEL = str(FIXTURE_MODELS / "tiny-zimage")
CASES = contract.cases()
STARTUP_IDS = [c["id"] for c in CASES["startup"]]
HTTP_IDS = [c["id"] for c in CASES["http"]]


@pytest.fixture(scope="session")
def real(tmp_path_factory) -> dict:
    venv = contract.real_venv()
    if not (venv / "bin" / "python").is_file():
        pytest.fail(f"the real vLLM-Omni 0.30.0 venv is missing at {venv} (set OMNITUNE_REAL_VLLM_VENV or run "
                    "tests/install_real_vllm.sh): the emulator's contract with the real server cannot be checked")
    return contract.ask_real(MODEL, tmp_path_factory.mktemp("real") / "answers.json")


@pytest.fixture(scope="module")
def emulated_http(tmp_path_factory) -> dict:
    emu = make_emulator(tmp_path_factory.mktemp("emu"))
    emu.write({"gpus": [H200], "cost": {"startup_s": 0.05}})
    server = start(emu, MODEL)
    try:
        answers = contract.emulator_http(server.url)
    finally:
        server.stop()
    return json.loads(json.dumps(answers).replace(MODEL, "MODEL"))


@pytest.fixture(scope="module")
def emulated_startup() -> dict:
    return contract.emulator_startup(MODEL)


def test_the_real_stack_is_the_one_the_contract_names(real):
    assert real["versions"]["vllm"] == "0.30.0" and real["versions"]["vllm-omni"] == "0.30.0"
    assert set(real["startup"]) == set(STARTUP_IDS) and set(real["http"]) == set(HTTP_IDS)


@pytest.mark.parametrize("case_id", STARTUP_IDS)
def test_an_argv_is_accepted_or_refused_as_the_real_cli_and_config_build_do(real, emulated_startup, case_id):
    assert contract.startup_problems(case_id, real["startup"][case_id], emulated_startup[case_id]) == []


@pytest.mark.parametrize("case_id", HTTP_IDS)
def test_a_request_gets_the_real_apps_status_and_error_shape(real, emulated_http, case_id):
    assert contract.http_problems(case_id, real["http"][case_id], emulated_http[case_id]) == []


def test_the_recorded_real_answers_are_still_what_the_real_stack_says(real):
    """reference/vllm-omni-0.30.0/real-answers.json (what the no-venv emulator tests compare with) is not stale."""
    recorded = json.loads(contract.RECORDED.read_text())
    for case_id in STARTUP_IDS:
        now, then = real["startup"][case_id], recorded["startup"][case_id]
        assert (now["stage"], now["exit_code"], now.get("config")) == (then["stage"], then["exit_code"],
                                                                       then.get("config")), case_id
        assert contract.pydantic_head(now.get("stderr") or now.get("error") or "") == \
            contract.pydantic_head(then.get("stderr") or then.get("error") or ""), case_id
    for case_id in HTTP_IDS:
        assert real["http"][case_id]["status"] == recorded["http"][case_id]["status"], case_id
