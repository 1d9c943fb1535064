"""The serving Python setting keeps the venv's own interpreter path (issue 15, defect 1)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client

from omnitune.server.main import build_server
from omnitune.tools.settings import settings_from_env

REPO = Path(__file__).resolve().parents[1]
SOURCE_030 = REPO / ".venv" / "vllm-omni-src" / "0.30.0" / "vllm_omni"
pytestmark = pytest.mark.anyio


@pytest.fixture
def serving_venv(tmp_path: Path) -> Path:
    """A real venv whose python is a symlink to the base interpreter and whose site-packages holds vllm_omni."""
    venv = tmp_path / "serve-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "vllm_omni").symlink_to(SOURCE_030, target_is_directory=True)
    python = venv / "bin" / "python"
    assert python.is_symlink() and python.resolve() != python
    return python


def test_the_serving_python_path_is_kept_as_given(serving_venv):
    s = settings_from_env({"OMNITUNE_SERVING_PYTHON": str(serving_venv)})
    assert s.serving_python == serving_venv  # the venv's python, not the interpreter its symlink points at


async def test_a_venv_serving_python_yields_a_capability_report(serving_venv, tmp_path):
    s = settings_from_env({"OMNITUNE_SERVING_PYTHON": str(serving_venv), "OMNITUNE_WORKSPACE": str(tmp_path / "ws")})
    async with Client(build_server(s)) as client:
        result = await client.call_tool("inspect_model_capabilities", {"model": "ZImagePipeline"})
    assert result.is_error is False, result.content
    assert result.structured_content["located_via"] == "serving_python"
    assert result.structured_content["vllm_omni_version"] == "0.30.0"


def test_the_test_stack_variable_is_not_mistaken_for_a_setting(tmp_path):
    s = settings_from_env({"OMNITUNE_REAL_VLLM_VENV": str(tmp_path), "OMNITUNE_WORKSPACE": str(tmp_path / "ws")})
    assert s.workspace == tmp_path / "ws"
