"""A thin, forgiving door to NVML (nvidia-ml-py's ``pynvml`` module), imported lazily.

NVML is the only source of GPU facts omnitune trusts. Missing library, missing driver and
individual "Not Supported" answers are normal on real machines, so every query goes through
:func:`query`, which turns an NVML error into ``None`` plus a reason instead of an exception.
Tests put a fake ``pynvml`` (``tests/emulator/fake_nvml``) first on the path; nothing else changes.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_refs = 0


class NvmlUnavailable(Exception):
    """NVML cannot be used at all on this machine; the message says why."""


def load() -> ModuleType:
    """The ``pynvml`` module, imported on first use (it is only a ctypes binding, but keep start fast)."""
    try:
        return importlib.import_module("pynvml")
    except ImportError as exc:  # pragma: no cover - nvidia-ml-py is a dependency
        raise NvmlUnavailable(f"the NVML Python binding is not installed ({exc}); pip install nvidia-ml-py") from exc


@contextmanager
def session() -> Iterator[ModuleType]:
    """``nvmlInit`` / ``nvmlShutdown`` around a block, reference counted so threads can share it."""
    global _refs
    nv = load()
    with _lock:
        if _refs == 0:
            try:
                nv.nvmlInit()
            except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
                raise NvmlUnavailable(describe(exc)) from exc
        _refs += 1
    try:
        yield nv
    finally:
        with _lock:
            _refs -= 1
            if _refs == 0:
                try:
                    nv.nvmlShutdown()
                except Exception:
                    pass


def describe(exc: BaseException) -> str:
    """NVML errors as words a user can act on."""
    text = str(exc) or type(exc).__name__
    low = text.lower()
    if "library not found" in low or "libnvidia-ml" in low or "shared library" in low:
        return f"NVML library not found ({text}): no NVIDIA driver is installed on this machine"
    if "driver not loaded" in low:
        return f"NVIDIA driver not loaded ({text})"
    return text


def query(fn: Callable[..., T], *args: Any, reasons: list[str] | None = None, what: str = "") -> T | None:
    """Call one NVML function; ``None`` (and a reason appended to ``reasons``) if the GPU refuses."""
    try:
        return fn(*args)
    except Exception as exc:
        if reasons is not None:
            reasons.append(f"{what or getattr(fn, '__name__', 'query')}: {describe(exc)}")
        return None


def text(value: Any) -> str:
    """NVML returns bytes in old bindings and str in new ones."""
    return value.decode() if isinstance(value, bytes) else str(value)
