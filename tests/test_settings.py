"""Settings: flags over OMNITUNE_* variables over defaults, and typos that stop omnitune instead of being ignored."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from omnitune.server.main import parse_args
from omnitune.tools.errors import SettingsError
from omnitune.tools.settings import settings_from_env

REPO = Path(__file__).resolve().parents[1]


def test_every_setting_can_come_from_an_environment_variable(tmp_path):
    env = {
        "OMNITUNE_WORKSPACE": str(tmp_path / "ws"), "OMNITUNE_VLLM": "/opt/serve/bin/vllm",
        "OMNITUNE_SERVING_PYTHON": "/opt/serve/bin/python", "OMNITUNE_VLLM_OMNI_SOURCE": str(tmp_path / "src"),
        "OMNITUNE_READ_ONLY": "yes", "OMNITUNE_SERVE_HOST": "0.0.0.0", "OMNITUNE_ALLOW_NETWORK": "1",
        "OMNITUNE_STOP_ON_EXIT": "0", "OMNITUNE_MODEL_ROOTS": f"{tmp_path / 'a'}:{tmp_path / 'b'}",
        "OMNITUNE_LOG_LEVEL": "debug",
    }
    s = settings_from_env(env)
    assert s.workspace == tmp_path / "ws" and s.vllm == "/opt/serve/bin/vllm"
    assert s.serving_python == Path("/opt/serve/bin/python") and s.vllm_omni_source == tmp_path / "src"
    assert s.read_only is True and s.allow_network is True and s.stop_on_exit is False
    assert s.serve_host == "0.0.0.0" and s.log_level == "DEBUG"
    assert s.model_roots == [tmp_path / "a", tmp_path / "b"]


def test_defaults_are_safe():
    s = settings_from_env({})
    assert s.read_only is False and s.serve_host == "127.0.0.1" and s.allow_network is False
    assert s.stop_on_exit is True and s.vllm == "vllm"


def test_flags_override_the_environment(tmp_path):
    args = parse_args(["--workspace", str(tmp_path / "flag"), "--read-only", "--no-stop-on-exit"])
    overrides = {k: v for k, v in vars(args).items() if k not in ("transport", "host", "port")}
    s = settings_from_env({"OMNITUNE_WORKSPACE": str(tmp_path / "env"), "OMNITUNE_READ_ONLY": "0"}, **overrides)
    assert s.workspace == tmp_path / "flag" and s.read_only is True and s.stop_on_exit is False


def test_a_misspelt_variable_is_an_error_with_the_closest_name():
    with pytest.raises(SettingsError) as err:
        settings_from_env({"OMNITUNE_READONLY": "1"})
    assert "OMNITUNE_READONLY" in err.value.problem and "OMNITUNE_READ_ONLY" in err.value.fix


@pytest.mark.parametrize("env, needle", [
    ({"OMNITUNE_READ_ONLY": "sometimes"}, "not a boolean"),
    ({"OMNITUNE_LOG_LEVEL": "chatty"}, "log_level"),
])
def test_a_bad_value_names_the_setting(env, needle):
    with pytest.raises(SettingsError, match=needle):
        settings_from_env(env)


def run_omnitune(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os
    full = {k: v for k, v in os.environ.items() if not k.startswith("OMNITUNE_")} | (env or {})
    return subprocess.run([sys.executable, "-m", "omnitune.server.main", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env=full, stdin=subprocess.DEVNULL)


def test_the_command_exits_2_on_an_unknown_variable_and_writes_nothing_to_stdout(tmp_path):
    proc = run_omnitune("--workspace", str(tmp_path / "ws"), env={"OMNITUNE_WORKSPAC": "x"})
    assert proc.returncode == 2 and proc.stdout == ""
    assert "unknown setting OMNITUNE_WORKSPAC" in proc.stderr and "OMNITUNE_WORKSPACE" in proc.stderr


def test_the_command_rejects_an_unknown_flag_like_argparse(tmp_path):
    proc = run_omnitune("--workspace", str(tmp_path / "ws"), "--turbo")
    assert proc.returncode == 2 and "unrecognized arguments: --turbo" in proc.stderr


def test_the_command_refuses_a_workspace_it_cannot_create(tmp_path):
    (tmp_path / "file").write_text("x")
    proc = run_omnitune("--workspace", str(tmp_path / "file" / "ws"))
    assert proc.returncode == 2 and "cannot create the workspace" in proc.stderr
