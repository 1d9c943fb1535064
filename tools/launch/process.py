"""Process groups: start a server in its own group, watch it, and end the whole group (never by name)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

CAUSES = [  # (cause, needles in the log tail), checked in order
    ("out_of_memory", ("CUDA out of memory", "OutOfMemoryError")),
    ("port_in_use", ("address already in use", "Errno 98")),
    ("bad_flag", ("unrecognized arguments", "error: argument", "invalid choice", "usage: vllm")),
    ("model_not_found", ("is not a local folder", "not a valid model identifier", "RepositoryNotFound",
                         "No such file or directory")),
    ("unsupported_feature", ("does not support", "NotImplementedError", "is not supported", "not supported for",
                             "must divide", "cannot be combined", "Unknown cache backend", "exceeds the number",
                             # vLLM-Omni 0.30.0's own texts (HSDP+TP, TeaCache coefficients, too few GPUs)
                             "is not compatible with", "Cannot find coefficients", "device(s) are available",
                             "Unsupported cache backend", "is incompatible with", "must be positive")),
]
FIXES = {
    "out_of_memory": "use FP8, CPU offload (enable_layerwise_offload), VAE slicing/tiling, more GPUs, or a smaller size",
    "port_in_use": "leave port unset (omnitune picks a free one) or stop what holds it",
    "bad_flag": "check extra_flags against the installed version (inspect_model_capabilities lists them)",
    "model_not_found": "check the model path or id; omnitune does not download models",
    "unsupported_feature": "drop the feature the log names; inspect_model_capabilities shows what this model supports",
    "timeout": "raise health_timeout_s if the model is large, or read server_logs for a hang",
    "crashed": "read the log tail; server_logs has the whole log",
}


def classify(log_tail: str, exit_code: int | None) -> str:
    for cause, needles in CAUSES:
        if any(n in log_tail for n in needles):
            return cause
    return "bad_flag" if exit_code == 2 else "crashed"


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


# The server starts only once the launcher says so (a byte on stdin), so it can never run untracked: its pid is
# recorded before it execs, and if the launcher dies first the pipe closes and the gate exits without starting.
GATE = ("import os, sys\n"
        "if os.read(0, 1) != b'1':\n    sys.exit(70)\n"
        "null = os.open(os.devnull, os.O_RDONLY)\nos.dup2(null, 0)\nos.close(null)\n"
        "os.execvp(sys.argv[1], sys.argv[1:])\n")


def spawn(argv: list[str], env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen, Callable[[], None]]:
    """A new session (so a new process group) with stdout+stderr in the log, no shell; held at a gate.

    Returns the process and ``release``: call it once the pid is recorded, and the gate execs ``argv`` in the
    same process (same pid and group).
    """
    with open(log_path, "ab", buffering=0) as log:
        popen = subprocess.Popen([sys.executable, "-I", "-S", "-c", GATE, *argv], env=env, stdin=subprocess.PIPE,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)

    def release() -> None:
        try:
            popen.stdin.write(b"1")
            popen.stdin.close()
        except OSError:  # it died at the gate; the health wait reports it
            pass

    return popen, release


def tail(path: Path, lines: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def process_identity(pid: int) -> float | None:
    """create_time of a live process (tells a reused pid apart), None if gone or a zombie."""
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p.create_time()
    except (psutil.Error, OSError):
        return None


def group_members(pgid: int, since: float | None = None) -> list[int]:
    """Live processes in a process group (started no earlier than ``since``, to skip pid reuse)."""
    members = []
    for p in psutil.process_iter(["pid", "create_time", "status"]):
        try:
            if os.getpgid(p.info["pid"]) != pgid or p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
        except (ProcessLookupError, PermissionError, OSError):
            continue
        if since is None or p.info["create_time"] >= since - 1:
            members.append(p.info["pid"])
    return members


def kill_group(pgid: int, since: float | None, grace_s: float, popen: subprocess.Popen | None = None) -> tuple[bool, bool]:
    """SIGTERM the group, SIGKILL what is left after ``grace_s``; (all gone, had to SIGKILL)."""
    def signal_group(sig: int) -> None:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def reap() -> None:
        if popen is not None:
            popen.poll()

    if not group_members(pgid, since):
        reap()
        return True, False
    signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        reap()
        if not group_members(pgid, since):
            return True, False
        time.sleep(0.05)
    signal_group(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        reap()
        if not group_members(pgid, since):
            return True, True
        time.sleep(0.05)
    return False, True


def resolve_executable_missing(vllm: str) -> bool:
    import shutil
    return shutil.which(vllm) is None
