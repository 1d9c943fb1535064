"""``detect_gpus``: what GPUs, links and host resources this machine offers for serving.

Everything comes from NVML and psutil at call time. No NVML, no driver or no GPU is a normal
answer (``available=False`` with the reason); a single field a GPU refuses to report is recorded in
that GPU's ``unavailable`` map instead of failing the whole call.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import psutil
from pydantic import BaseModel, Field

from omnitune.tools import nvml

MIB = 1024 * 1024

# Compute capability (major, minor) -> architecture; checked from the top down.
_ARCHITECTURES: list[tuple[tuple[int, int], str]] = [
    ((12, 0), "Blackwell"), ((11, 0), "Blackwell"), ((10, 0), "Blackwell"), ((9, 0), "Hopper"),
    ((8, 9), "Ada Lovelace"), ((8, 0), "Ampere"), ((7, 5), "Turing"), ((7, 0), "Volta"),
    ((6, 0), "Pascal"), ((5, 0), "Maxwell"), ((3, 0), "Kepler"),
]


def architecture(major: int, minor: int) -> str:
    for (ma, mi), name in _ARCHITECTURES:
        if (major, minor) >= (ma, mi):
            return name
    return "unknown"


def fp8_native(major: int, minor: int) -> bool:
    """FP8 tensor cores exist from SM 8.9 (Ada) on; below, vLLM falls back to weight-only FP8."""
    return (major, minor) >= (8, 9)


class GpuProcess(BaseModel):
    pid: int
    name: str | None = Field(None, description="Process name (psutil), if visible.")
    used_memory_mib: int | None = Field(None, description="GPU memory the process holds, MiB (None: not reported).")


class Gpu(BaseModel):
    index: int = Field(description="NVML index (what CUDA_VISIBLE_DEVICES means with CUDA_DEVICE_ORDER=PCI_BUS_ID).")
    uuid: str | None = None
    name: str | None = None
    pci_bus_id: str | None = None
    memory_total_mib: int | None = None
    memory_used_mib: int | None = None
    memory_free_mib: int | None = None
    compute_capability: str | None = Field(default=None, description="SM version, e.g. '9.0'.")
    architecture: str | None = None
    fp8_native: bool | None = Field(default=None, description="SM 8.9+: FP8 runs natively (else weight-only fallback).")
    mig_mode: str | None = Field(default=None, description="'enabled' or 'disabled'; None when the GPU has no MIG.")
    numa_node: int | None = None
    utilization_percent: int | None = None
    processes: list[GpuProcess] = Field(default_factory=list)
    unavailable: dict[str, str] = Field(default_factory=dict,
                                        description="Fields the GPU refused to report, with NVML's reason.")


class GpuLink(BaseModel):
    a: int
    b: int
    topology: str | None = Field(None, description="NVML common ancestor: internal, single_switch, multiple_switch, "
                                                   "host_bridge, numa_node, system.")
    nvlink: bool = Field(False, description="P2P over NVLink is possible between the pair.")
    nvlink_count: int = Field(0, description="Active NVLinks joining them (through NVSwitch: the links of the GPU).")
    via_nvswitch: bool = False
    p2p_read: str | None = Field(None, description="NVML P2P read status: ok, not_supported, ...")
    unavailable: dict[str, str] = Field(default_factory=dict, description="Link queries NVML refused, with the reason.")


class HostInfo(BaseModel):
    cpu_cores_logical: int | None
    cpu_cores_physical: int | None
    ram_total_mib: int
    ram_available_mib: int
    workspace: str
    workspace_disk_free_mib: int | None


class GpuReport(BaseModel):
    available: bool = Field(description="False when NVML, the driver or GPUs are missing; `reason` says which.")
    reason: str | None = None
    driver_version: str | None = None
    cuda_driver_version: str | None = Field(default=None,
                                            description="Highest CUDA version the driver supports, e.g. '12.8'.")
    gpu_count: int = 0
    gpus: list[Gpu] = Field(default_factory=list)
    links: list[GpuLink] = Field(default_factory=list, description="One entry per GPU pair.")
    host: HostInfo
    cuda_visible_devices: str | None = Field(None, description="CUDA_VISIBLE_DEVICES of omnitune's own environment.")


_TOPOLOGY = {0: "internal", 10: "single_switch", 20: "multiple_switch", 30: "host_bridge", 40: "numa_node",
             50: "system"}
_P2P_STATUS = {0: "ok", 1: "chipset_not_supported", 2: "gpu_not_supported", 3: "iohub_topology_not_supported",
               4: "disabled_by_regkey", 5: "not_supported", 6: "unknown"}


def host_info(workspace: Path) -> HostInfo:
    mem = psutil.virtual_memory()
    probe = workspace
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free // MIB
    except OSError:
        free = None
    return HostInfo(cpu_cores_logical=psutil.cpu_count(logical=True),
                    cpu_cores_physical=psutil.cpu_count(logical=False),
                    ram_total_mib=mem.total // MIB, ram_available_mib=mem.available // MIB,
                    workspace=str(workspace), workspace_disk_free_mib=free)


def _process_name(pid: int) -> str | None:
    try:
        return psutil.Process(pid).name()
    except (psutil.Error, OSError):
        return None


def _read_gpu(nv, index: int) -> tuple[Gpu, object]:
    reasons: dict[str, str] = {}

    def q(field: str, fn, *args):
        errs: list[str] = []
        value = nvml.query(fn, *args, reasons=errs)
        if errs:
            reasons[field] = errs[0].split(": ", 1)[-1]
        return value

    handle = nv.nvmlDeviceGetHandleByIndex(index)
    gpu = Gpu(index=index)
    uuid = q("uuid", nv.nvmlDeviceGetUUID, handle)
    gpu.uuid = nvml.text(uuid) if uuid is not None else None
    name = q("name", nv.nvmlDeviceGetName, handle)
    gpu.name = nvml.text(name) if name is not None else None
    pci = q("pci_bus_id", nv.nvmlDeviceGetPciInfo, handle)
    gpu.pci_bus_id = nvml.text(pci.busId) if pci is not None else None
    mem = q("memory", nv.nvmlDeviceGetMemoryInfo, handle)
    if mem is not None:
        gpu.memory_total_mib, gpu.memory_used_mib, gpu.memory_free_mib = (int(mem.total) // MIB, int(mem.used) // MIB,
                                                                          int(mem.free) // MIB)
    cc = q("compute_capability", nv.nvmlDeviceGetCudaComputeCapability, handle)
    if cc is not None:
        major, minor = int(cc[0]), int(cc[1])
        gpu.compute_capability, gpu.architecture, gpu.fp8_native = f"{major}.{minor}", architecture(major, minor), \
            fp8_native(major, minor)
    mig = q("mig_mode", nv.nvmlDeviceGetMigMode, handle)
    if mig is not None:
        gpu.mig_mode = "enabled" if int(mig[0]) == 1 else "disabled"
    if hasattr(nv, "nvmlDeviceGetNumaNodeId"):
        numa = q("numa_node", nv.nvmlDeviceGetNumaNodeId, handle)
        gpu.numa_node = int(numa) if numa is not None else None
    util = q("utilization_percent", nv.nvmlDeviceGetUtilizationRates, handle)
    gpu.utilization_percent = int(util.gpu) if util is not None else None
    procs: dict[int, GpuProcess] = {}
    for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        fn = getattr(nv, getter, None)
        listed = q("processes", fn, handle) if fn else None
        for p in listed or []:
            used = getattr(p, "usedGpuMemory", None)
            mib = int(used) // MIB if isinstance(used, int) and used >= 0 and used < 2**60 else None
            procs.setdefault(int(p.pid),
                             GpuProcess(pid=int(p.pid), name=_process_name(int(p.pid)), used_memory_mib=mib))
    gpu.processes = list(procs.values())
    # MIG is absent on most GPUs: "Not Supported" there is an answer, not a failure.
    if reasons.get("mig_mode", "").lower().startswith("not supported"):
        reasons.pop("mig_mode")
    gpu.unavailable = reasons
    return gpu, handle


def _nvlinks(nv, handle) -> list[tuple[str | None, bool]]:
    """(remote PCI bus id, remote is an NVSwitch) for each active NVLink of a GPU."""
    links = []
    for link in range(int(getattr(nv, "NVML_NVLINK_MAX_LINKS", 18))):
        state = nvml.query(nv.nvmlDeviceGetNvLinkState, handle, link)
        if state != 1:
            continue
        remote_fn = getattr(nv, "nvmlDeviceGetNvLinkRemotePciInfo_v2", None) or nv.nvmlDeviceGetNvLinkRemotePciInfo
        remote = nvml.query(remote_fn, handle, link)
        kind = nvml.query(nv.nvmlDeviceGetNvLinkRemoteDeviceType, handle, link) \
            if hasattr(nv, "nvmlDeviceGetNvLinkRemoteDeviceType") else None
        links.append((nvml.text(remote.busId) if remote is not None else None, kind == 2))
    return links


def _norm_bus(bus: str | None) -> str | None:
    """NVML pads PCI domains differently in different structs: compare the last 12 characters."""
    return bus.lower()[-12:] if bus else None


def _links(nv, gpus: list[Gpu], handles: list) -> list[GpuLink]:
    nvl = [_nvlinks(nv, h) for h in handles]
    nvlink_index = getattr(nv, "NVML_P2P_CAPS_INDEX_NVLINK", 3)
    read_index = getattr(nv, "NVML_P2P_CAPS_INDEX_READ", 0)
    out = []
    for i in range(len(gpus)):
        for j in range(i + 1, len(gpus)):
            refused: list[str] = []
            level = nvml.query(nv.nvmlDeviceGetTopologyCommonAncestor, handles[i], handles[j], reasons=refused,
                               what="topology")
            p2p_nvlink = nvml.query(nv.nvmlDeviceGetP2PStatus, handles[i], handles[j], nvlink_index, reasons=refused,
                                    what="p2p_nvlink")
            p2p_read = nvml.query(nv.nvmlDeviceGetP2PStatus, handles[i], handles[j], read_index, reasons=refused,
                                  what="p2p_read")
            peer = _norm_bus(gpus[j].pci_bus_id)
            direct = sum(1 for bus, _ in nvl[i] if _norm_bus(bus) == peer and peer)
            switched = sum(1 for _, is_switch in nvl[i] if is_switch)
            nvlink = p2p_nvlink == 0 or direct > 0
            out.append(GpuLink(
                a=gpus[i].index, b=gpus[j].index,
                topology=_TOPOLOGY.get(int(level), str(level)) if level is not None else None,
                nvlink=nvlink, nvlink_count=direct or (switched if nvlink else 0),
                via_nvswitch=bool(nvlink and not direct and switched),
                p2p_read=_P2P_STATUS.get(int(p2p_read), str(p2p_read)) if p2p_read is not None else None,
                unavailable=dict(r.split(": ", 1) for r in refused)))
    return out


def _cuda_version(raw: int | None) -> str | None:
    return f"{raw // 1000}.{(raw % 1000) // 10}" if raw else None


def detect_gpus(workspace: Path) -> GpuReport:
    """Everything NVML and psutil know that matters for placing a diffusion server."""
    host = host_info(workspace)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        with nvml.session() as nv:
            driver = nvml.query(nv.nvmlSystemGetDriverVersion)
            cuda_fn = getattr(nv, "nvmlSystemGetCudaDriverVersion_v2", None) or nv.nvmlSystemGetCudaDriverVersion
            cuda = nvml.query(cuda_fn)
            count = nvml.query(nv.nvmlDeviceGetCount) or 0
            read = [_read_gpu(nv, i) for i in range(count)]
            gpus, handles = [g for g, _ in read], [h for _, h in read]
            links = _links(nv, gpus, handles)
    except nvml.NvmlUnavailable as exc:
        return GpuReport(available=False, reason=str(exc), host=host, cuda_visible_devices=visible)
    report = GpuReport(available=bool(gpus), reason=None if gpus else "NVML works but reports no GPU",
                       driver_version=nvml.text(driver) if driver is not None else None,
                       cuda_driver_version=_cuda_version(cuda), gpu_count=len(gpus), gpus=gpus, links=links,
                       host=host, cuda_visible_devices=visible)
    return report
