"""The one model resolver: what the user named (a folder, a Hugging Face id, a pipeline class name) to a typed model.

inspect, plan, launch and tune all call :func:`resolve_model`, so a model one accepts the others accept too, and
the model-roots rule holds everywhere: a local folder must lie under an allowed root (``Settings.
effective_model_roots``) and nothing outside the roots is read, nor is it revealed whether such a path exists.

No network: a Hugging Face id is looked up in the local hub cache (``HF_HUB_CACHE`` / ``HF_HOME``); only with
``allow_network`` is ``model_index.json`` fetched from the hub. A bare word is never a hub id.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from omnitune.tools.errors import CapabilityError, InvalidRequestError, NotFoundError
from omnitune.tools.settings import Settings, hf_cache_dir

# org/name as the hub allows them: letters, digits, '-', '_', '.', each part starting with a letter or digit.
HF_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}", re.ASCII)
CLASS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}", re.ASCII)
HEAD_KEYS = ("num_attention_heads", "n_heads", "num_heads", "attention_head_count")
MAX_NAME = 1024  # longer than any real path or id; longer names fail as "file name too long" deep inside
Kind = Literal["local", "hf-cache", "hf-hub", "class-name"]
NAMES = "a model folder under an allowed root, a Hugging Face id (org/name) in the local cache, or a pipeline class"


@dataclass(frozen=True)
class ResolvedModel:
    kind: Kind
    name: str                 # what the user gave
    arch: str                 # the pipeline `_class_name`
    path: Path | None         # folder holding model_index.json (local, hf-cache)
    hub_id: str | None = None

    @property
    def launchable(self) -> bool:
        """A class name names code, not weights: `vllm serve` needs a folder or a hub id."""
        return self.kind != "class-name"

    @property
    def serve_arg(self) -> str | None:
        """What goes to `vllm serve MODEL`: the resolved folder, or the hub id (served from the cache)."""
        return str(self.path) if self.kind == "local" else self.hub_id

    def heads(self, attr: str = "transformer") -> tuple[int | None, str | None]:
        """The DiT's attention head count and where it was read (None without a local config)."""
        return head_count(self.path, attr)


def _read_index(folder: Path) -> str:
    index = folder / "model_index.json"
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CapabilityError(f"{index} could not be read as JSON ({exc}).",
                              "check the model folder is a complete diffusers-format download.") from exc
    name = data.get("_class_name") if isinstance(data, dict) else None
    if not isinstance(name, str) or not CLASS_NAME.fullmatch(name):
        raise CapabilityError(f"{index} has no valid `_class_name`.",
                              "use a diffusers-format model folder, or pass the pipeline class name directly.")
    return name


def _hf_snapshot(repo_id: str) -> Path | None:
    org, name = repo_id.split("/", 1)
    snapshots = hf_cache_dir() / f"models--{org}--{name}" / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = snapshots.parent / "refs" / "main"
    if ref.is_file():
        main = snapshots / ref.read_text().strip()
        if main.parent == snapshots and (main / "model_index.json").is_file():
            return main
    found = sorted(snapshots.glob("*/model_index.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    return found[0].parent if found else None


def _hf_hub(repo_id: str) -> str:
    import httpx
    url = f"https://huggingface.co/{repo_id}/resolve/main/model_index.json"
    try:
        resp = httpx.get(url, follow_redirects=True, timeout=20)
    except httpx.HTTPError as exc:
        raise CapabilityError(f"could not reach the Hugging Face hub for {repo_id}: {exc}.",
                              "download the model first (huggingface-cli download) or check the network.") from exc
    if resp.status_code != 200:
        raise NotFoundError(f"{repo_id} has no model_index.json on the Hugging Face hub (HTTP {resp.status_code}).",
                            "check the id; vLLM-Omni diffusion models are diffusers-format repositories.")
    name = resp.json().get("_class_name")
    if not isinstance(name, str) or not CLASS_NAME.fullmatch(name):
        raise CapabilityError(f"{repo_id}'s model_index.json has no `_class_name`.", "pass the pipeline class name.")
    return name


def inside_roots(settings: Settings, path: Path) -> bool:
    return any(path == root or root in path.parents for root in settings.effective_model_roots)


def _outside(settings: Settings, shown: str) -> NotFoundError:
    # The same answer whether or not the path exists: the roots are the only part of the disk omnitune reads.
    roots = ", ".join(map(str, settings.effective_model_roots))
    return NotFoundError(f"the model folder {shown[:200]} lies outside the allowed model roots ({roots}).",
                         "move the model under an allowed root or add its folder with --model-root / "
                         "OMNITUNE_MODEL_ROOTS.")


def _local(settings: Settings, text: str) -> ResolvedModel:
    path = Path(text).expanduser().resolve()  # symlinks resolved first: a link may not lead out of the roots
    if not inside_roots(settings, path):
        raise _outside(settings, text)
    if not path.is_dir():
        raise NotFoundError(f"the model folder {path} does not exist.", f"pass {NAMES}.")
    if not (path / "model_index.json").is_file():
        raise CapabilityError(
            f"{path} has no model_index.json, so its pipeline class cannot be read.",
            "pass the folder of a diffusers-format model (it holds model_index.json), "
            "or pass the pipeline class name (e.g. QwenImagePipeline).")
    return ResolvedModel("local", text, _read_index(path), path)


def _explicit_path(text: str) -> bool:
    return text.startswith(("/", "~")) or text in (".", "..") or text.startswith(("./", "../"))


def _relative_folder(settings: Settings, text: str) -> bool:
    """A relative name that is a folder under an allowed root (only such folders are looked at)."""
    path = (Path.cwd() / text).resolve()
    return inside_roots(settings, path) and path.is_dir()


def _check_text(model: str) -> str:
    text = model.strip()
    if not text:
        raise InvalidRequestError("no model given.", f"pass {NAMES}.")
    if len(text) > MAX_NAME:
        raise InvalidRequestError(f"the model name is {len(text)} characters long; at most {MAX_NAME}.",
                                  f"pass {NAMES}.")
    if text.startswith("-") or any(ord(c) < 32 or c == "\x7f" for c in text):
        raise InvalidRequestError(f"model {text[:80]!r} starts with '-' or holds a control character.",
                                  f"pass {NAMES}.")
    return text


def resolve_model(settings: Settings, model: str) -> ResolvedModel:
    """Folder (under the roots) -> HF cache (-> hub with allow_network) -> class name; a clear error otherwise."""
    text = _check_text(model)
    try:
        if _explicit_path(text) or ("/" in text and not HF_ID.fullmatch(text)) or _relative_folder(settings, text):
            return _local(settings, text)
        if HF_ID.fullmatch(text):
            snap = _hf_snapshot(text)
            if snap is not None:
                return ResolvedModel("hf-cache", text, _read_index(snap), snap, hub_id=text)
            if settings.allow_network:
                return ResolvedModel("hf-hub", text, _hf_hub(text), None, hub_id=text)
            raise NotFoundError(
                f"{text} is not in the local Hugging Face cache ({hf_cache_dir()}/models--"
                f"{text.replace('/', '--')}/snapshots/*/model_index.json) and network look-ups are off.",
                f"download it (huggingface-cli download {text}), pass its folder, pass the pipeline class name, "
                "or allow network look-ups (OMNITUNE_ALLOW_NETWORK=1).")
    except OSError as exc:  # an over-long component, a permission error: the path is unusable, say so plainly
        raise InvalidRequestError(f"model {text[:80]!r} cannot be read as a path ({exc.strerror}).",
                                  f"pass {NAMES}.") from None
    if CLASS_NAME.fullmatch(text):
        return ResolvedModel("class-name", text, text, None)
    raise NotFoundError(f"{text[:200]!r} is neither a folder under an allowed root, a Hugging Face id (org/name) "
                        "nor a pipeline class name.", f"pass {NAMES}.")


def head_count(folder: Path | None, attr: str = "transformer") -> tuple[int | None, str | None]:
    """The DiT's attention head count from ``<folder>/<attr>/config.json`` (and where it was read)."""
    if folder is None:
        return None, None
    cfg = folder / attr / "config.json"
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    for key in HEAD_KEYS:
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, f"{cfg}:{key}"
    return None, None
