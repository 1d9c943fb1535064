"""omnitune's settings: command-line flags over ``OMNITUNE_*`` environment variables over defaults.

One typed object, validated once at start, so that a typo (an unknown ``OMNITUNE_`` variable, a
boolean spelled "yse") stops omnitune with a message instead of being silently ignored.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator

from omnitune.tools.errors import SettingsError

ENV_PREFIX = "OMNITUNE_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def default_workspace() -> Path:
    """The user's data dir (XDG), where runs and the database live unless told otherwise."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "omnitune"


def hf_cache_dir() -> Path:
    """Hugging Face hub cache, honouring HF_HUB_CACHE and HF_HOME as huggingface_hub does."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    home = os.environ.get("HF_HOME") or str(Path(cache) / "huggingface")
    return Path(home).expanduser() / "hub"


class Settings(BaseModel):
    """Everything omnitune needs to know about where it runs; see README for each variable."""

    model_config = {"frozen": True}

    workspace: Path = Field(default_factory=default_workspace,
                            description="Folder holding omnitune.db and one folder per run.")
    vllm: str = Field(default="vllm",
                      description="The `vllm` executable of the serving environment (name on PATH or path).")
    serving_python: Path | None = Field(default=None,
                                        description="Python of the serving environment (imports vllm_omni).")
    vllm_omni_source: Path | None = Field(default=None, description="A vllm-omni source folder (checkout or "
                                                            "site-packages/vllm_omni).")
    read_only: bool = Field(default=False, description="Observe only: refuse every tool that changes something.")
    serve_host: str = Field(default="127.0.0.1", description="Address launched servers bind to.")
    allow_network: bool = Field(default=False, description="Allow model look-ups on the Hugging Face hub.")
    stop_on_exit: bool = Field(default=True, description="Stop the servers this omnitune started when it shuts down.")
    model_roots: list[Path] = Field(default_factory=list,
                                    description="Folders local model paths must lie in (empty: home, HF cache, cwd; "
                                                "never / or a top-level system folder).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    http_token: SecretStr | None = Field(default=None, description="Bearer token the HTTP transport requires "
                                         "(default: generated for a non-loopback bind, none on loopback).")
    ray_address: str | None = Field(default=None, description="Ray cluster (GCS host:port, or 'auto') whose nodes run "
                                    "tune trials (pip install 'omnitune[ray]'); unset: this host only.")

    @field_validator("workspace", "vllm_omni_source", mode="after")
    @classmethod
    def _expand(cls, v: Path | None) -> Path | None:
        return v.expanduser().resolve() if v is not None else None

    @field_validator("serving_python", mode="after")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        # Never resolve symlinks: <venv>/bin/python links to the base interpreter, and only the link's own
        # path makes Python read the venv's pyvenv.cfg (its site-packages, where vLLM-Omni lives).
        return Path(os.path.abspath(v.expanduser())) if v is not None else None

    @field_validator("model_roots", mode="after")
    @classmethod
    def _expand_roots(cls, v: list[Path]) -> list[Path]:
        return [p.expanduser().resolve() for p in v]

    @property
    def effective_model_roots(self) -> list[Path]:
        """Where local model folders may come from (the workspace always counts).

        Without --model-root: home, the HF cache and the current folder, except any of them that is `/` or a
        top-level folder such as /etc or /usr (home itself excepted): started from `/`, omnitune must not be
        allowed to read every folder of the machine.
        """
        if self.model_roots:
            return [*self.model_roots, self.workspace]
        home = Path.home().resolve()
        implicit = [home, hf_cache_dir().resolve(), Path.cwd().resolve()]
        safe = [p for p in implicit if len(p.parts) > 2 or (p == home and len(p.parts) == 2)]
        return [*dict.fromkeys(safe), self.workspace]

    @property
    def db_path(self) -> Path:
        return self.workspace / "omnitune.db"

    @property
    def runs_dir(self) -> Path:
        return self.workspace / "runs"


# Environment variable (without prefix) -> field name.
ENV_FIELDS: dict[str, str] = {
    "WORKSPACE": "workspace",
    "VLLM": "vllm",
    "SERVING_PYTHON": "serving_python",
    "VLLM_OMNI_SOURCE": "vllm_omni_source",
    "READ_ONLY": "read_only",
    "SERVE_HOST": "serve_host",
    "ALLOW_NETWORK": "allow_network",
    "STOP_ON_EXIT": "stop_on_exit",
    "MODEL_ROOTS": "model_roots",
    "LOG_LEVEL": "log_level",
    "HTTP_TOKEN": "http_token",
    "RAY_ADDRESS": "ray_address",
}


# Variables of the test tooling (tests/install_real_vllm.sh, tests/run.sh), not omnitune settings: never an error.
TEST_VARIABLES = {"REAL_VLLM_VENV", "REAL_VLLM", "REAL_VLLM_CHECK_S", "TEST_WORKERS"}


def _parse_bool(name: str, raw: str) -> bool:
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean.", f"set {name} to 1 or 0 (true/false).")


def settings_from_env(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Build settings from ``OMNITUNE_*`` variables, then apply explicit overrides (CLI flags).

    Unknown ``OMNITUNE_*`` variables are an error with the closest known name, because a
    misspelt ``OMNITUNE_READONLY`` silently ignored would let omnitune launch servers.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        short = key[len(ENV_PREFIX):]
        if short in TEST_VARIABLES:
            continue
        field = ENV_FIELDS.get(short)
        if field is None:
            close = difflib.get_close_matches(short, list(ENV_FIELDS), n=1)
            hint = f"did you mean {ENV_PREFIX}{close[0]}?" if close else \
                f"known variables: {', '.join(ENV_PREFIX + k for k in ENV_FIELDS)}."
            raise SettingsError(f"unknown setting {key}.", hint)
        if field in ("read_only", "allow_network", "stop_on_exit"):
            values[field] = _parse_bool(key, raw)
        elif field == "model_roots":
            values[field] = [p for p in raw.split(os.pathsep) if p]
        elif field == "log_level":
            values[field] = raw.strip().upper()
        elif raw.strip():
            values[field] = raw
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err["loc"])
        raise SettingsError(f"setting {name} is invalid: {err['msg']}.",
                            f"correct {name} (flag --{name.replace('_', '-')} or {ENV_PREFIX}{name.upper()}).") from exc
