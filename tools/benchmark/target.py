"""Which server a benchmark measures, and the key under which its runs can be reused.

A server omnitune launched is named by its id (URL, GPUs, serve config and model come from its record);
a server started elsewhere by its URL on this machine plus the GPU indices it runs on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, Field, model_validator

from omnitune.tools.errors import BenchmarkError, InvalidRequestError
from omnitune.tools.servers import get_server
from omnitune.tools.store import Store

# ServeConfig fields that say where or under which name a server runs, not how it serves.
PLACEMENT_FIELDS = ("gpus", "port", "served_model_name", "health_timeout_s")


class BenchmarkTarget(BaseModel):
    """A server omnitune launched (server_id), or one on this machine given by URL and GPUs."""

    server_id: str | None = Field(None, description="Id from launch_server (preferred: URL, GPUs and config known).")
    base_url: str | None = Field(None, description="http://127.0.0.1:PORT of a server omnitune did not launch.")
    gpus: list[int] = Field(default_factory=list, description="With base_url: physical GPU indices to sample.")

    @model_validator(mode="after")
    def _one(self) -> BenchmarkTarget:
        if bool(self.server_id) == bool(self.base_url):
            raise ValueError("give exactly one of server_id or base_url")
        return self


@dataclass
class Resolved:
    base_url: str
    gpus: list[int]
    server_id: str | None = None
    model: str | None = None
    config: dict[str, Any] = field(default_factory=dict)


def config_key(model: str | None, config: dict[str, Any], version: str | None, gpu_names: list[str | None]) -> str:
    """sha256 of the canonical serve config + model + vLLM(-Omni) version + GPU models and count.

    Where a server runs (indices, port, name) is left out, so the same configuration on another pair of
    identical GPUs has the same key. The tuner calls this for a candidate before launching it.
    """
    canon = {k: v for k, v in sorted(config.items()) if k not in PLACEMENT_FIELDS and k != "model"}
    doc = {"config": canon, "model": model, "version": version, "gpus": sorted(str(n) for n in gpu_names)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def _check_local(url: str) -> str:
    parsed = urlparse(url)
    fix = "give the server's URL on this machine, e.g. http://127.0.0.1:8000."
    if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.path not in ("", "/"):
        raise InvalidRequestError(f"base_url {url!r} is not http://HOST:PORT.", fix)
    host = parsed.hostname
    local = host == "localhost"
    if not local:
        try:
            local = ip_address(host).is_loopback
        except ValueError:
            local = False
    if not local:
        raise InvalidRequestError(f"base_url {url!r} is not on this machine; omnitune only measures local servers "
                                  "(GPU telemetry must read the same GPUs).", fix)
    return url.rstrip("/")


def resolve(store: Store, target: BenchmarkTarget) -> Resolved:
    if target.server_id:
        record = get_server(store, target.server_id)
        if record.status != "running":
            raise BenchmarkError(f"server {record.id} is {record.status}, not running.",
                                 "launch it again (launch_server) or pick a running one from list_servers.")
        config = {k: v for k, v in record.config.items() if k not in PLACEMENT_FIELDS}
        return Resolved(base_url=record.base_url, gpus=list(record.gpus), server_id=record.id, model=record.model,
                        config=config)
    return Resolved(base_url=_check_local(target.base_url or ""), gpus=list(target.gpus))
