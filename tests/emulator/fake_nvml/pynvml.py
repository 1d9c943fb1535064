"""A stand-in for nvidia-ml-py's ``pynvml`` that reports the emulator scenario's simulated GPUs.

Put this folder first on ``sys.path`` (or PYTHONPATH) and omnitune's real NVML code runs unchanged
against simulated hardware. The GPUs come from the scenario file named by ``VLLM_EMU_SCENARIO``
(its ``gpus`` and ``topology`` fields, see tests/emulator/README.md). Memory in use is the sum of what
live emulated servers declare in ``VLLM_EMU_STATE_DIR`` (one ``<pid>.json`` per server:
``{"pid": ..., "memory_mib": {"<physical index>": MiB}}``), so telemetry reflects what runs.
``VLLM_EMU_NVML=missing`` simulates a machine without the NVML library.
"""

from __future__ import annotations

import json
import os
from collections import namedtuple

NVML_NVLINK_MAX_LINKS = 18
NVML_P2P_CAPS_INDEX_READ = 0
NVML_P2P_CAPS_INDEX_NVLINK = 3
NVML_P2P_STATUS_OK = 0
NVML_P2P_STATUS_NOT_SUPPORTED = 5
NVML_DEVICE_MIG_ENABLE = 1
MIB = 1024 * 1024

Memory = namedtuple("Memory", "total free used")
Utilization = namedtuple("Utilization", "gpu memory")
Process = namedtuple("Process", "pid usedGpuMemory")
PciInfo = namedtuple("PciInfo", "busId")


class NVMLError(Exception):
    def __init__(self, value: int, text: str) -> None:
        self.value = value
        super().__init__(text)


class NVMLError_NotSupported(NVMLError):
    def __init__(self) -> None:
        super().__init__(3, "Not Supported")


class NVMLError_LibraryNotFound(NVMLError):
    def __init__(self) -> None:
        super().__init__(12, "NVML Shared Library Not Found")


class NVMLError_Uninitialized(NVMLError):
    def __init__(self) -> None:
        super().__init__(1, "Uninitialized")


_initialized = 0


# Parsed files by (path, inode, mtime, size): omnitune samples memory at 200 Hz per GPU, and parsing the scenario
# and every state file at each call cost ~0.1 ms (a tenth of a core on an 8-GPU world); a rewritten file (the
# emulator replaces its state file atomically) has a new key, so every answer is still the files' content now.
_parsed: dict[str, tuple[tuple[int, int, int], dict]] = {}


def _read_json(path: str, st: os.stat_result | None = None) -> dict:
    st = st or os.stat(path)
    key = (st.st_ino, st.st_mtime_ns, st.st_size)
    hit = _parsed.get(path)
    if hit is None or hit[0] != key:
        with open(path, "rb") as f:
            hit = (key, json.loads(f.read()))
        _parsed[path] = hit
    return hit[1]


def _scenario() -> dict:
    path = os.environ.get("VLLM_EMU_SCENARIO")
    return _read_json(path) if path else {}


def _gpus() -> list[dict]:
    return _scenario().get("gpus", [])


def _check() -> None:
    if not _initialized:
        raise NVMLError_Uninitialized()


def nvmlInit() -> None:
    global _initialized
    if os.environ.get("VLLM_EMU_NVML") == "missing":
        raise NVMLError_LibraryNotFound()
    _initialized += 1


def nvmlShutdown() -> None:
    global _initialized
    _initialized = max(0, _initialized - 1)


def nvmlSystemGetDriverVersion() -> str:
    _check()
    return _scenario().get("driver_version", "570.86.15")


def nvmlSystemGetCudaDriverVersion_v2() -> int:
    _check()
    return int(_scenario().get("cuda_driver_version", 12080))


nvmlSystemGetCudaDriverVersion = nvmlSystemGetCudaDriverVersion_v2


def nvmlDeviceGetCount() -> int:
    _check()
    return len(_gpus())


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    _check()
    if not 0 <= index < len(_gpus()):
        raise NVMLError(2, "Invalid Argument")
    return index


def _gpu(handle: int) -> dict:
    _check()
    return _gpus()[handle]


def _refuses(handle: int, field: str) -> None:
    if field in _gpu(handle).get("not_supported", []):
        raise NVMLError_NotSupported()


def nvmlDeviceGetUUID(handle: int) -> str:
    return _gpu(handle).get("uuid", f"GPU-emu-{handle:04d}-0000-0000-000000000000")


def nvmlDeviceGetName(handle: int) -> str:
    return _gpu(handle).get("name", "NVIDIA H200")


def nvmlDeviceGetPciInfo(handle: int) -> PciInfo:
    _check()
    return PciInfo(busId=f"00000000:{0x18 + handle:02X}:00.0")


def _live_usage(busy_only: bool = False) -> dict[int, dict[int, int]]:
    """{physical index: {pid: MiB}} from the state files of emulated servers that are still alive.

    ``busy_only``: only servers computing a request (``"busy": true``; a file without the key counts as busy).
    """
    usage: dict[int, dict[int, int]] = {}
    state_dir = os.environ.get("VLLM_EMU_STATE_DIR")
    try:
        entries = [e for e in os.scandir(state_dir) if e.name.endswith(".json")] if state_dir else []
    except OSError:
        return usage
    for f in entries:
        try:
            data = _read_json(f.path, f.stat())
            pid = int(data["pid"])
            os.kill(pid, 0)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if busy_only and not data.get("busy", True):
            continue
        for idx, mib in data.get("memory_mib", {}).items():
            usage.setdefault(int(idx), {})[pid] = int(mib)
    return usage


def nvmlDeviceGetMemoryInfo(handle: int) -> Memory:
    gpu = _gpu(handle)
    total = int(gpu.get("memory_mib", 143771)) * MIB
    used = (int(gpu.get("idle_used_mib", 0)) + sum(_live_usage().get(handle, {}).values())) * MIB
    used = min(used, total)
    return Memory(total=total, free=total - used, used=used)


def nvmlDeviceGetCudaComputeCapability(handle: int) -> tuple[int, int]:
    cc = _gpu(handle).get("compute_capability", [9, 0])
    return int(cc[0]), int(cc[1])


def nvmlDeviceGetMigMode(handle: int) -> tuple[int, int]:
    _refuses(handle, "mig_mode")
    mode = 1 if _gpu(handle).get("mig") else 0
    return mode, mode


def nvmlDeviceGetNumaNodeId(handle: int) -> int:
    _refuses(handle, "numa_node")
    return int(_gpu(handle).get("numa_node", 0))


def nvmlDeviceGetUtilizationRates(handle: int) -> Utilization:
    _refuses(handle, "utilization")
    gpu = _gpu(handle)
    busy = bool(_live_usage(busy_only=True).get(handle))
    percent = int(gpu.get("busy_utilization", 90)) if busy else int(gpu.get("idle_utilization", 0))
    return Utilization(gpu=percent, memory=percent // 3)


def nvmlDeviceGetComputeRunningProcesses(handle: int) -> list[Process]:
    _check()
    return [Process(pid=pid, usedGpuMemory=mib * MIB) for pid, mib in _live_usage().get(handle, {}).items()]


def nvmlDeviceGetGraphicsRunningProcesses(handle: int) -> list[Process]:
    _check()
    return []


def _topology() -> str:
    return _scenario().get("topology", "nvswitch")


def nvmlDeviceGetNvLinkState(handle: int, link: int) -> int:
    _check()
    if _topology() == "pcie":
        raise NVMLError_NotSupported()
    if link >= int(_scenario().get("nvlinks_per_gpu", 18)):
        raise NVMLError(2, "Invalid Argument")
    return 1


def nvmlDeviceGetNvLinkRemoteDeviceType(handle: int, link: int) -> int:
    _check()
    return 2  # NVML_NVLINK_DEVICE_TYPE_SWITCH


def nvmlDeviceGetNvLinkRemotePciInfo_v2(handle: int, link: int) -> PciInfo:
    _check()
    return PciInfo(busId=f"00000000:{0xA0 + link % 4:02X}:00.0")  # an NVSwitch


def nvmlDeviceGetTopologyCommonAncestor(a: int, b: int) -> int:
    _check()
    return 0 if _topology() == "nvswitch" else 50


def nvmlDeviceGetP2PStatus(a: int, b: int, index: int) -> int:
    _check()
    if index == NVML_P2P_CAPS_INDEX_NVLINK:
        return NVML_P2P_STATUS_OK if _topology() == "nvswitch" else NVML_P2P_STATUS_NOT_SUPPORTED
    return NVML_P2P_STATUS_OK
