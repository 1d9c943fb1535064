"""The Launcher: validated launches, bounded health waits, group stops, and a registry that survives restarts.

Every server it starts is a row in the ``servers`` table before the process exists, so an omnitune
that dies (even by SIGKILL) leaves enough behind for the next one to find the orphan and stop it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from omnitune.tools import nvml, owner
from omnitune.tools.errors import ConfigRejected, InvalidRequestError, LaunchError, OmnituneError, ReadOnlyError
from omnitune.tools.gpus import detect_gpus
from omnitune.tools.launch import gate, process
from omnitune.tools.launch.config import ServeConfig, build_argv
from omnitune.tools.launch.validate import validate
from omnitune.tools.servers import ServerRecord, get_server, list_server_records
from omnitune.tools.settings import Settings
from omnitune.tools.store import now
from omnitune.tools.tls import tls_context
from omnitune.tools.workspace import Workspace, new_id

log = logging.getLogger(__name__)
Progress = Callable[[float, float | None, str], None]
MIB = 1024 * 1024
HEALTH_PROBE_S = 3.0  # list_servers: a running server whose /health is silent this long is unresponsive


class LaunchResult(BaseModel):
    dry_run: bool
    argv: list[str] = Field(description="The exact command (no shell involved).")
    env: dict[str, str] = Field(description="Environment variables omnitune sets for the server.")
    warnings: list[str] = Field(default_factory=list)
    server: ServerRecord | None = Field(default=None, description="The running server (None for a dry run).")
    command: str = Field(description="The same command as one line to paste into a shell (quoted).")
    preflight: dict = Field(default_factory=dict, description="Who checked the command: source 'engine' (the serving "
                                                              "environment's own parser and config build) or 'rules' "
                                                              "(omnitune's rules only, with the reason).")


class ServerView(BaseModel):
    server: ServerRecord
    state: Literal["running", "orphaned", "unresponsive", "exited", "failed", "stopped", "starting"] = Field(
        description="orphaned: alive but launched by an omnitune that is gone (stop_server ends it); unresponsive: "
                    "its process is stopped (SIGSTOP) or /health does not answer (stop_server ends it).")
    alive_pids: list[int] = Field(default_factory=list)
    problem: str | None = Field(default=None, description="Why it is unresponsive, or what happened to an exited "
                                                          "server (e.g. its leader died and its workers were stopped).")


class StopResult(BaseModel):
    server_id: str
    stopped: bool = Field(description="Every process of the server's group is gone.")
    forced: bool = Field(description="SIGKILL was needed after the grace period.")
    leftover_pids: list[int] = Field(default_factory=list)
    gpu_memory_released: bool | None = Field(None, description="GPU memory back to its level before launch "
                                                               "(None: no NVML).")
    gpu_memory_mib: dict[str, int] = Field(default_factory=dict, description="Used MiB per GPU after stop.")


def gpu_used_mib(indices: list[int]) -> dict[int, int] | None:
    try:
        with nvml.session() as nv:
            return {i: int(nv.nvmlDeviceGetMemoryInfo(nv.nvmlDeviceGetHandleByIndex(i)).used) // MIB for i in indices}
    except Exception:
        return None


def gpu_free_mib(indices: list[int]) -> dict[int, int] | None:
    try:
        with nvml.session() as nv:
            return {i: int(nv.nvmlDeviceGetMemoryInfo(nv.nvmlDeviceGetHandleByIndex(i)).free) // MIB for i in indices}
    except Exception:
        return None


@contextmanager
def gpu_lock(workspace: Path) -> Iterator[None]:
    """One launch at a time per workspace, across omnitune processes (an flock, released if the process dies)."""
    import fcntl
    with open(workspace / "launch.lock", "a+") as f:
        deadline = time.monotonic() + 120
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LaunchError("another launch in this workspace held the GPU lock for 120 s.",
                                      "retry; list_servers shows what is starting", cause="busy") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _continue_if_stopped(pgid: int, since: float | None) -> None:
    """A frozen (SIGSTOP) server cannot act on SIGTERM: SIGCONT its group so a stop ends it cleanly."""
    if owner.stopped(pgid, since):
        try:
            os.killpg(pgid, signal.SIGCONT)
        except (ProcessLookupError, PermissionError):
            pass


def quote(argv: list[str]) -> str:
    import shlex
    return " ".join(shlex.quote(a) for a in argv)


class Launcher:
    def __init__(self, settings: Settings, workspace: Workspace,
                 capabilities: Callable[[str], Any] | None = None) -> None:
        self.settings, self.workspace, self.store = settings, workspace, workspace.store
        self._capabilities = capabilities
        self._popens: dict[str, subprocess.Popen] = {}
        self._stopping: set[str] = set()
        self._lock = threading.Lock()
        gate.warm(settings)  # the real preflight imports vLLM in the background (35-100 s), once per serving Python

    # -- validation -----------------------------------------------------------------------------
    def _capability(self, model: str, warnings: list[str]) -> Any | None:
        if self._capabilities is None:
            return None
        try:
            return self._capabilities(model)
        except OmnituneError as exc:  # not found, not cached, vllm-omni absent: validate without it, and say so
            warnings.append(f"capability report unavailable, feature support not checked: {exc}")
            return None

    def plan_launch(self, config: ServeConfig) -> tuple[list[str], dict[str, str], list[str], list[int], dict]:
        """argv, env, warnings, GPUs and preflight record of a launch, or ConfigRejected before anything starts."""
        early: list[str] = []
        report = detect_gpus(self.workspace.root)
        capability = self._capability(config.model, early)
        catalogue = gate.catalogue(self.settings, self.workspace.root / "cache") if config.extra_flags else None
        result = validate(self.settings, config, report, capability, catalogue)
        port = config.port
        if port is not None and process.port_in_use(self.settings.serve_host, port):
            result.error(f"port {port} on {self.settings.serve_host} is already in use",
                         "leave port unset (omnitune picks a free one) or stop what holds it")
        if process.resolve_executable_missing(self.settings.vllm):
            result.error(f"the vllm executable {self.settings.vllm!r} was not found",
                         "set OMNITUNE_VLLM (or --vllm) to the serving environment's vllm")
        if result.errors:
            raise ConfigRejected(result.errors, result.fixes)
        port = port or process.free_port(self.settings.serve_host)
        argv = build_argv(self.settings.vllm, config, result.model_arg or config.model, self.settings.serve_host, port)
        env = {"CUDA_VISIBLE_DEVICES": ",".join(map(str, result.gpus)), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        if not self.settings.allow_network:  # omnitune never downloads weights unless --allow-network
            env["HF_HUB_OFFLINE"] = "1"
        record = gate.engine_check(self.settings, argv, env["CUDA_VISIBLE_DEVICES"], result)
        if result.errors:
            raise ConfigRejected(result.errors, result.fixes)
        return argv, env, early + result.warnings, result.gpus, record

    # -- launch ---------------------------------------------------------------------------------
    def launch(self, config: ServeConfig, dry_run: bool = False, progress: Progress | None = None,
               labels: dict[str, str] | None = None) -> LaunchResult:
        """Validate, start and wait for health. ``labels`` are kept with the record (e.g. the tune job that
        launched it, so a resumed tune can find and stop what its dead predecessor left running)."""
        if self.settings.read_only and not dry_run:
            raise ReadOnlyError("launch a server")
        argv, env, warnings, gpus, checked = self.plan_launch(config)
        if dry_run:
            return LaunchResult(dry_run=True, argv=argv, env=env, warnings=warnings, server=None,
                                command=quote(argv), preflight=checked)
        with gpu_lock(self.workspace.root):  # check and reserve as one step, across omnitune processes too
            exclusive = bool((labels or {}).get("tune_job"))  # a tune measures alone on its GPUs
            warnings += self.check_gpus(config.model, gpus, exclusive)
            server_id = new_id("srv")
            run_dir = self.workspace.new_run_dir(server_id)
            log_path = run_dir / "server.log"
            before = gpu_used_mib(gpus) or {}
            own_pid, own_start = owner.me()
            port = int(argv[argv.index("--port") + 1])
            self.store.insert("servers", {
                "id": server_id, "created_at": now(), "model": config.model, "status": "starting",
                "config": config.model_dump(mode="json"), "argv": argv, "env": env, "host": self.settings.serve_host,
                "port": port, "owner_pid": own_pid, "owner_start_time": own_start, "gpus": gpus,
                "run_dir": str(run_dir), "log_path": str(log_path),
                "data": {"warnings": warnings, "memory_before_mib": before, "labels": labels or {}}})
        start = time.monotonic()
        popen, release = process.spawn(argv, {**os.environ, **env}, log_path)
        with self._lock:
            self._popens[server_id] = popen
        self.store.update("servers", {"id": server_id}, {
            "pid": popen.pid, "pgid": popen.pid, "proc_start_time": owner.identity(popen.pid)})
        release()  # recorded: only now may it start
        self._wait_healthy(server_id, popen, port, config.health_timeout_s, start, progress)
        startup = time.monotonic() - start
        after = gpu_used_mib(gpus) or {}
        held = {str(i): max(0, after[i] - before.get(i, 0)) for i in after}
        self.store.update("servers", {"id": server_id}, {"status": "running", "startup_s": startup,
                                                         "memory_after_load": held})
        record = get_server(self.store, server_id)
        record.data["used_after_load_mib"] = {str(k): v for k, v in after.items()}
        self.store.update("servers", {"id": server_id}, {"data": record.data})
        log.info("server %s healthy after %.2f s on port %d", server_id, startup, port)
        return LaunchResult(dry_run=False, argv=argv, env=env, warnings=warnings,
                            server=get_server(self.store, server_id), command=quote(argv), preflight=checked)

    # -- GPU accounting between omnitune's own servers ------------------------------------------
    def holders(self, gpus: list[int]) -> list[ServerView]:
        """Live servers of this workspace (any omnitune process) on any of ``gpus``."""
        found = []
        for record in list_server_records(self.store):
            if record.status in ("running", "starting") and set(record.gpus) & set(gpus):
                view = self.view(record, probe=False)
                if view.state in ("running", "orphaned", "unresponsive", "starting"):
                    found.append(view)
        return found

    def check_gpus(self, model: str, gpus: list[int], exclusive: bool) -> list[str]:
        """Refuse a launch onto GPUs omnitune's own servers are loading, fill, or (``exclusive``) hold at all;
        warnings for a shared GPU that has room. Memory asked: what this model held per GPU when last loaded."""
        warnings: list[str] = []
        problems: list[str] = []
        need = self._memory_needed(model)
        free = gpu_free_mib(gpus) or {}
        for view in self.holders(gpus):
            shared = sorted(set(view.server.gpus) & set(gpus))
            sid = view.server.id
            if view.state == "starting":
                problems.append(f"GPU {shared} is being loaded by omnitune server {sid} (starting): two servers "
                                "loading on one GPU at once run each other out of memory")
            elif exclusive:
                problems.append(f"GPU {shared} is held by omnitune server {sid} ({view.state}): a tune must "
                                "measure alone on its GPUs")
            else:
                short = [g for g in shared if need is not None and free.get(g) is not None and free[g] < need]
                if short:
                    problems.append(f"GPU {short} has {min(free[g] for g in short)} MiB free (omnitune server {sid} "
                                    f"holds the rest) but {model} needed {need} MiB per GPU when last loaded")
                else:
                    warnings.append(f"GPU {shared} is shared with omnitune server {sid}: measurements on it are "
                                    "not alone")
        if problems:
            raise ConfigRejected(problems, ["stop that server (stop_server) or give other GPUs (config.gpus; "
                                            "detect_gpus lists them)"])
        return warnings

    def _memory_needed(self, model: str) -> int | None:
        """MiB per GPU this model held after load in an earlier server of this workspace (the largest seen)."""
        seen = [max(r.memory_after_load.values()) for r in list_server_records(self.store)
                if r.model == model and r.memory_after_load]
        return max(seen) if seen else None

    def _wait_healthy(self, server_id: str, popen: subprocess.Popen, port: int, timeout_s: float, start: float,
                      progress: Progress | None) -> None:
        import httpx
        host = "127.0.0.1" if self.settings.serve_host in ("0.0.0.0", "") else self.settings.serve_host
        url = f"http://{host}:{port}/health"
        last_report = -1.0
        with httpx.Client(timeout=2.0, verify=tls_context()) as client:
            while True:
                elapsed = time.monotonic() - start
                code = popen.poll()
                if code is not None:
                    self._fail(server_id, popen, code, None)
                if owner.stopped(popen.pid, None):  # frozen while loading (SIGSTOP): it would never answer
                    self._fail(server_id, popen, None, "unresponsive")
                try:
                    if client.get(url).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if elapsed > timeout_s:
                    self._fail(server_id, popen, None, "timeout")
                if progress and elapsed - last_report >= 1.0:
                    last_report = elapsed
                    progress(elapsed, timeout_s, f"waiting for /health ({elapsed:.0f} s)")
                time.sleep(0.05)

    def _fail(self, server_id: str, popen: subprocess.Popen, code: int | None, cause: str | None) -> None:
        record = get_server(self.store, server_id)
        _continue_if_stopped(popen.pid, record.proc_start_time)
        process.kill_group(popen.pid, record.proc_start_time, grace_s=5, popen=popen)
        found, line, tail = process.failure(Path(record.log_path), code)  # the root cause first, ANSI stripped
        if server_id in self._stopping:  # omnitune stopped it (shutdown, cancel): not the server's failure
            cause = "stopped"
        cause = cause or found
        self.store.update("servers", {"id": server_id}, {"status": "failed", "cause": cause, "exit_code": code,
                                                         "stopped_at": now()})
        what = "was stopped by omnitune while starting" if cause == "stopped" else \
            "was frozen (SIGSTOP) while loading; its process group was killed" if cause == "unresponsive" else \
            f"exited with code {code}" if code is not None else \
            f"did not answer /health within {record.config.get('health_timeout_s')} s; its process group was killed"
        raise LaunchError(f"server {server_id} {what} ({cause}). Cause in the log: {line}.", process.FIXES.get(cause),
                          cause=cause, log_tail=tail)

    # -- stop, list, logs -----------------------------------------------------------------------
    def stop(self, server_id: str, grace_s: float = 10.0) -> StopResult:
        if self.settings.read_only:
            raise ReadOnlyError("stop a server")
        record = get_server(self.store, server_id)
        if record.pgid is None:
            raise InvalidRequestError(f"server {server_id} never started a process.", "nothing to stop")
        popen = self._popens.get(server_id)
        self._stopping.add(server_id)
        _continue_if_stopped(record.pgid, record.proc_start_time)
        gone, forced = process.kill_group(record.pgid, record.proc_start_time, grace_s, popen)
        leftover = process.group_members(record.pgid, record.proc_start_time)
        released, used = self._memory_released(record)
        status = "stopped" if record.status in ("running", "starting") else record.status
        self.store.update("servers", {"id": server_id}, {"status": status, "stopped_at": record.stopped_at or now()})
        return StopResult(server_id=server_id, stopped=gone and not leftover, forced=forced, leftover_pids=leftover,
                          gpu_memory_released=released, gpu_memory_mib={str(k): v for k, v in (used or {}).items()})

    def _memory_released(self, record: ServerRecord) -> tuple[bool | None, dict[int, int] | None]:
        """Wait (bounded) for the GPUs to drop back to their level before the launch."""
        before = {int(k): v for k, v in record.data.get("memory_before_mib", {}).items()}
        deadline = time.monotonic() + 10
        while True:
            used = gpu_used_mib(record.gpus)
            if used is None or not before:
                return None, used
            if all(used[i] <= before.get(i, 0) + 256 for i in used):
                return True, used
            if time.monotonic() > deadline:
                return False, used
            time.sleep(0.1)

    def view(self, record: ServerRecord, probe: bool = True) -> ServerView:
        """The server's state by the liveness rule (pid + start time): a dead leader whose workers still hold GPUs
        is ended (whole group) and reported exited; a stopped (SIGSTOP) or silent one is unresponsive."""
        alive = process.group_members(record.pgid, record.proc_start_time) if record.pgid else []
        leader_alive = record.pid is not None and owner.alive(record.pid, record.proc_start_time)
        owner_alive = owner.alive(record.owner_pid, record.owner_start_time)
        if record.status not in ("running", "starting"):
            return ServerView(server=record, state=record.status, alive_pids=alive)
        if record.pid is None:  # recorded, process not spawned yet (or never, if its omnitune died there)
            return ServerView(server=record, state="starting" if owner_alive else "exited")
        if not leader_alive:
            problem = None
            if alive:  # workers without their leader serve nothing but hold GPU memory: end the whole group
                gone, _ = process.kill_group(record.pgid or record.pid, record.proc_start_time, grace_s=5,
                                             popen=self._popens.get(record.id))
                problem = (f"its leader process {record.pid} died; its {len(alive)} worker process(es) "
                           f"{alive} were stopped" + ("" if gone else " (some are still alive)"))
                log.warning("server %s: %s", record.id, problem)
            popen = self._popens.get(record.id)
            code = popen.poll() if popen else None
            self.store.update("servers", {"id": record.id}, {
                "status": "exited", "exit_code": code, "stopped_at": now(),
                **({"cause": "leader_died"} if problem else {})})
            record = get_server(self.store, record.id)
            return ServerView(server=record, state="exited", problem=problem,
                              alive_pids=process.group_members(record.pgid, record.proc_start_time)
                              if record.pgid else [])
        problem = owner.process_problem(record.pid, record.proc_start_time)
        if problem is None and probe and record.status == "running" and not self._answers(record):
            problem = f"GET {record.base_url}/health did not answer within {HEALTH_PROBE_S:g} s"
        if problem:
            return ServerView(server=record, state="unresponsive", alive_pids=alive, problem=problem)
        if record.status == "starting":
            return ServerView(server=record, state="starting" if owner_alive else "orphaned", alive_pids=alive)
        return ServerView(server=record, state="running" if owner_alive else "orphaned", alive_pids=alive)

    @staticmethod
    def _answers(record: ServerRecord) -> bool:
        import httpx
        try:
            answer = httpx.get(f"{record.base_url}/health", timeout=HEALTH_PROBE_S, verify=tls_context())
            return answer.status_code == 200
        except httpx.HTTPError:
            return False

    def list(self) -> list[ServerView]:
        return [self.view(r) for r in list_server_records(self.store)]

    def logs(self, server_id: str, lines: int = 100) -> str:
        record = get_server(self.store, server_id)
        return process.tail(Path(record.log_path), lines)

    def stop_owned(self) -> None:
        """On shutdown: stop every live server this omnitune process launched."""
        for record in list_server_records(self.store):
            if record.owner_pid == os.getpid() and record.status in ("running", "starting"):
                try:
                    self.stop(record.id, grace_s=5)
                except Exception:
                    log.exception("could not stop %s on exit", record.id)
