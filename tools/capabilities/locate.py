"""Find the vllm-omni whose code omnitune reads, without importing it (or vllm).

Order: ``settings.vllm_omni_source`` (a ``vllm_omni`` folder or a folder containing one), then the
serving Python (asked for ``importlib.util.find_spec("vllm_omni")``, which does not import the package),
then omnitune's own environment. The report says which one was used and the version.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import logging
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from omnitune.tools.errors import CapabilityError
from omnitune.tools.settings import Settings

log = logging.getLogger(__name__)

# Run in the serving Python: where the package is and its version, importing neither vllm nor vllm_omni.
_PROBE = (
    "import importlib.util, importlib.metadata, json\n"
    "s = importlib.util.find_spec('vllm_omni')\n"
    "v = None\n"
    "try:\n    v = importlib.metadata.version('vllm-omni')\nexcept Exception:\n    pass\n"
    "print(json.dumps({'origin': s.origin if s else None, "
    "'locations': list(s.submodule_search_locations or []) if s else [], 'version': v}))\n"
)


@dataclass(frozen=True)
class Located:
    root: Path          # the vllm_omni package folder
    version: str
    via: str            # settings.vllm_omni_source | serving_python | omnitune_env
    docs: Path | None   # a checkout's docs/ folder, when there is one


def _package_dir(folder: Path) -> Path | None:
    if (folder / "__init__.py").is_file() and folder.name == "vllm_omni":
        return folder
    if (folder / "vllm_omni" / "__init__.py").is_file():
        return folder / "vllm_omni"
    return None


def read_version(pkg: Path) -> str:
    """The version from ``_version.py`` / ``version.py`` (read, not imported), else the dist-info, else 'unknown'."""
    for name in ("_version.py", "version.py"):
        path = pkg / name
        if not path.is_file():
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) \
                    and isinstance(node.value.value, str):
                if any(isinstance(t, ast.Name) and t.id in ("__version__", "version") for t in node.targets):
                    return node.value.value
    for meta in sorted(pkg.parent.glob("vllm_omni-*.dist-info/METADATA")):
        m = re.search(r"^Version: (\S+)", meta.read_text(encoding="utf-8", errors="replace"), re.M)
        if m:
            return m.group(1)
    return "unknown"


def _docs_for(pkg: Path) -> Path | None:
    docs = pkg.parent / "docs"
    return docs if docs.is_dir() else None


_PROBED: dict[tuple[str, float], Path | None] = {}


def _from_serving_python(python: Path) -> Path | None:
    """Ask once per interpreter (path, mtime): the package folder does not move; the cache re-checks its files."""
    try:
        key = (str(python), python.stat().st_mtime)
    except OSError:
        key = (str(python), 0.0)
    if key not in _PROBED:
        _PROBED[key] = _probe(python)
    return _PROBED[key]


def _probe(python: Path) -> Path | None:
    try:
        out = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CapabilityError(f"could not run the serving Python {python}: {exc}.",
                              "set OMNITUNE_SERVING_PYTHON (or --serving-python) to the Python that has vllm-omni."
                              ) from exc
    if out.returncode != 0:
        raise CapabilityError(f"the serving Python {python} failed to report vllm_omni: {out.stderr.strip()[-300:]}",
                              "check OMNITUNE_SERVING_PYTHON points to a working Python.")
    info = json.loads(out.stdout.strip().splitlines()[-1])
    for loc in info.get("locations") or []:
        pkg = _package_dir(Path(loc))
        if pkg:
            return pkg
    return None


def locate(settings: Settings) -> Located:
    """The vllm_omni package folder to read, its version and how it was found; CapabilityError if none."""
    looked: list[str] = []
    if settings.vllm_omni_source is not None:
        pkg = _package_dir(settings.vllm_omni_source)
        if pkg is None:
            raise CapabilityError(
                f"settings.vllm_omni_source={settings.vllm_omni_source} holds no vllm_omni package "
                "(looked for vllm_omni/__init__.py in it and for it being the package folder itself).",
                "point OMNITUNE_VLLM_OMNI_SOURCE at a vllm-omni checkout or at site-packages/vllm_omni.")
        return Located(pkg, read_version(pkg), "settings.vllm_omni_source", _docs_for(pkg))
    looked.append("settings.vllm_omni_source (unset)")
    if settings.serving_python is not None:
        pkg = _from_serving_python(settings.serving_python)
        if pkg is not None:
            return Located(pkg, read_version(pkg), "serving_python", _docs_for(pkg))
        looked.append(f"serving Python {settings.serving_python} (vllm_omni not importable there)")
    else:
        looked.append("settings.serving_python (unset)")
    spec = importlib.util.find_spec("vllm_omni")
    if spec is not None and spec.submodule_search_locations:
        pkg = _package_dir(Path(list(spec.submodule_search_locations)[0]))
        if pkg is not None:
            return Located(pkg, read_version(pkg), "omnitune_env", _docs_for(pkg))
    looked.append("omnitune's own Python environment")
    raise CapabilityError(
        "vllm-omni was not found; looked at: " + "; ".join(looked) + ".",
        "set OMNITUNE_SERVING_PYTHON to the Python of the environment where vllm-omni is installed, "
        "or OMNITUNE_VLLM_OMNI_SOURCE to a vllm-omni source folder (pip install --no-deps vllm-omni gives one).")
