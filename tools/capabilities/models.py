"""Resolve what the user named to a pipeline `_class_name`: a folder, a Hugging Face id, or a class name.

No network: a Hugging Face id is looked up in the local hub cache (``HF_HUB_CACHE`` / ``HF_HOME``);
only with ``allow_network`` is ``model_index.json`` fetched from the hub.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from omnitune.tools.errors import CapabilityError, NotFoundError
from omnitune.tools.settings import Settings, hf_cache_dir

HF_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
CLASS_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HEAD_KEYS = ("num_attention_heads", "n_heads", "num_heads", "attention_head_count")


@dataclass(frozen=True)
class ResolvedModel:
    arch: str                 # the `_class_name`
    path: Path | None         # local folder holding model_index.json, if any
    how: str                  # folder | hf_cache | hf_hub | class_name


def _read_index(folder: Path) -> str:
    index = folder / "model_index.json"
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CapabilityError(f"{index} could not be read as JSON ({exc}).",
                              "check the model folder is a complete diffusers-format download.") from exc
    name = data.get("_class_name") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name:
        raise CapabilityError(f"{index} has no `_class_name`.",
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
        if (main / "model_index.json").is_file():
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
    if not name:
        raise CapabilityError(f"{repo_id}'s model_index.json has no `_class_name`.", "pass the pipeline class name.")
    return name


def resolve_model(settings: Settings, model: str) -> ResolvedModel:
    """Folder -> HF cache -> class name; a clear error listing what was looked at otherwise."""
    text = model.strip()
    if not text:
        raise CapabilityError("no model given.", "pass a model folder, a Hugging Face id or a pipeline class name.")
    path = Path(text).expanduser()
    looks_like_path = text.startswith(("/", ".", "~")) or path.exists()
    if looks_like_path:
        if not path.is_dir():
            raise NotFoundError(f"the model folder {path} does not exist.",
                                "pass an existing diffusers-format folder, a Hugging Face id or a pipeline class name.")
        if not (path / "model_index.json").is_file():
            raise CapabilityError(
                f"{path} has no model_index.json, so its pipeline class cannot be read.",
                "pass the folder of a diffusers-format model (it holds model_index.json), "
                "or pass the pipeline class name (e.g. QwenImagePipeline).")
        return ResolvedModel(_read_index(path.resolve()), path.resolve(), "folder")
    if HF_ID.match(text):
        snap = _hf_snapshot(text)
        if snap is not None:
            return ResolvedModel(_read_index(snap), snap, "hf_cache")
        if settings.allow_network:
            return ResolvedModel(_hf_hub(text), None, "hf_hub")
        raise NotFoundError(
            f"{text} is not in the local Hugging Face cache ({hf_cache_dir()}/models--"
            f"{text.replace('/', '--')}/snapshots/*/model_index.json) and network look-ups are off.",
            "download it (huggingface-cli download " + text + "), pass its folder, pass the pipeline class name, "
            "or allow network look-ups (OMNITUNE_ALLOW_NETWORK=1).")
    if CLASS_NAME.match(text):
        return ResolvedModel(text, None, "class_name")
    raise NotFoundError(f"{model!r} is neither a folder, a Hugging Face id (org/name) nor a pipeline class name.",
                        "pass one of those three.")


def head_count(folder: Path | None, attr: str = "transformer") -> tuple[int | None, str | None]:
    """The DiT's attention head count from ``<folder>/<attr>/config.json`` (and where it was read)."""
    if folder is None:
        return None, None
    cfg = folder / attr / "config.json"
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None, None
    for key in HEAD_KEYS:
        if isinstance(data.get(key), int):
            return data[key], f"{cfg}:{key}"
    return None, None
