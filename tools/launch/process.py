"""Process groups: start a server in its own group, watch it, and end the whole group (never by name)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

CAUSES = [  # (cause, needles in the log tail), checked in order
    ("no_gpu", (" 0 device(s) are available", "No CUDA GPUs are available", "Found no NVIDIA driver",
                "CUDA driver initialization failed", "in set_device\n", "NVIDIA driver on your system is too old")),
    ("not_enough_gpus", ("device(s) are available",)),
    ("out_of_memory", ("CUDA out of memory", "OutOfMemoryError")),
    ("port_in_use", ("address already in use", "Errno 98")),
    ("bad_flag", ("unrecognized arguments", "error: argument", "invalid choice", "usage: vllm")),
    ("model_not_found", ("is not a local folder", "not a valid model identifier", "RepositoryNotFound",
                         "No such file or directory")),
    ("unsupported_feature", ("does not support", "NotImplementedError", "is not supported", "not supported for",
                             "must divide", "cannot be combined", "Unknown cache backend", "exceeds the number",
                             # vLLM-Omni 0.30.0's own texts (HSDP+TP, TeaCache coefficients, too few GPUs)
                             "is not compatible with", "Cannot find coefficients",
                             "Unsupported cache backend", "is incompatible with", "must be positive")),
]
FIXES = {
    "no_gpu": "this host has no usable GPU for vLLM-Omni (it serves diffusion only on GPUs): run on the GPU host, "
              "or check the driver and CUDA_VISIBLE_DEVICES with detect_gpus",
    "not_enough_gpus": "give the server as many GPUs as its parallel settings need (gpus), or lower the degrees",
    "out_of_memory": "use FP8, CPU offload (enable_layerwise_offload), VAE slicing/tiling, more GPUs, or a "
                     "smaller size",
    "port_in_use": "leave port unset (omnitune picks a free one) or stop what holds it",
    "bad_flag": "check extra_flags against the installed version (inspect_model_capabilities lists them)",
    "model_not_found": "check the model path or id; omnitune does not download models",
    "unsupported_feature": "drop the feature the log names; inspect_model_capabilities shows what this model supports",
    "timeout": "raise health_timeout_s if the model is large, or read server_logs for a hang",
    "crashed": "read the log tail; server_logs has the whole log",
}


ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
PREFIX = re.compile(r"^(\(\w+ pid=\d+\)\s*)?((INFO|WARNING|ERROR|DEBUG|CRITICAL) \S+ \S+ \[[^\]]+\]\s?)?")
EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt))(: .*)?$")
# Wrappers that re-raise the real cause with less (or no) text.
WRAPPERS = ("Orchestrator initialization failed", "Engine core initialization failed", "See root cause above",
            "See logs above", "died unexpectedly", "Worker failed")


def clean(text: str) -> str:
    """The log without ANSI colours or the per-line process/level prefixes vLLM adds."""
    return "\n".join(PREFIX.sub("", ANSI.sub("", line)) for line in text.splitlines())


def root_cause(text: str) -> str | None:
    """The first real exception of the log (with the frame that raised it), not the wrapper that ends it."""
    lines = clean(text).splitlines()
    found: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        m = EXCEPTION.match(line.strip())
        if m and not (line.startswith(" ") and "Error" not in m.group(1)):
            found.append((i, line.strip()))
    for i, line in found:
        if any(w in line for w in WRAPPERS):
            continue
        frame = next((lines[j].strip() for j in range(i - 1, max(-1, i - 6), -1)
                      if lines[j].strip().startswith("File ")), "")
        return f"{line} ({frame.replace('File ', '', 1)})" if frame else line
    usage = [ln.strip() for ln in lines if ": error: " in ln]
    return usage[-1] if usage else (found[-1][1] if found else None)


def classify(log_tail: str, exit_code: int | None) -> str:
    text = clean(log_tail)
    for cause, needles in CAUSES:
        if any(n in text for n in needles):
            return cause
    return "bad_flag" if exit_code == 2 else "crashed"


def failure(path: Path, exit_code: int | None) -> tuple[str, str, str]:
    """(cause class, the root-cause line, the report: cause first, then the cleaned tail)."""
    text = read_end(path)
    cause = classify(text, exit_code)
    line = root_cause(text) or "no exception in the log"
    tail_lines = clean(text).splitlines()[-40:]
    return cause, line, "\n".join([f"cause: {line}", "...", *tail_lines])


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
        assert popen.stdin is not None
        try:
            popen.stdin.write(b"1")
            popen.stdin.close()
        except OSError:  # it died at the gate; the health wait reports it
            pass

    return popen, release


def read_end(path: Path, size_limit: int = 256 * 1024) -> str:
    """The last ``size_limit`` bytes of a log (a real failure log runs to hundreds of lines)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - size_limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log, ANSI colour codes removed."""
    return "\n".join(ANSI.sub("", read_end(path, 64 * 1024)).splitlines()[-lines:])


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


def kill_group(pgid: int, since: float | None, grace_s: float,
               popen: subprocess.Popen | None = None) -> tuple[bool, bool]:
    """SIGTERM the group, SIGKILL what is left after ``grace_s``; (all gone, had to SIGKILL)."""
    def signal_group(sig: int) -> None:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def gone() -> bool:
        """No live member, and the leader, when it is our child, reaped. ``group_members`` skips zombies, but a
        multi-threaded leader shows as one while its other threads are still exiting (and may still hold GPU
        memory); it can be reaped only once they are gone, and left unreaped it stays a zombie while omnitune
        runs."""
        if group_members(pgid, since):
            return False
        return popen is None or popen.poll() is not None

    if gone():
        return True, False
    signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if gone():
            return True, False
        time.sleep(0.05)
    signal_group(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if gone():
            return True, True
        time.sleep(0.05)
    return False, True


def resolve_executable_missing(vllm: str) -> bool:
    import shutil
    return shutil.which(vllm) is None
