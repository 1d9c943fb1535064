"""The emulator's answers to the contract cases, and how they are compared with the real vLLM-Omni 0.30.0's.

The cases (``reference/contract-cases.json``) go to the real stack through ``reference/tools/real_answers.py``
(in the real venv) and to the emulator here: startup argv through ``startup.decide`` (the same code the emulated
server runs), HTTP requests over a socket to a served emulator. ``startup_problems``/``http_problems`` list every
difference; the contract tests assert there are none.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
from pathlib import Path

from tests.emulator import startup
from tests.emulator import world as w

HERE = Path(__file__).resolve().parent
CASES = HERE / "reference" / "contract-cases.json"
RECORDED = HERE / "reference" / "vllm-omni-0.30.0" / "real-answers.json"
HELPER = HERE / "reference" / "tools" / "real_answers.py"
DEFAULT_VENV = Path.home() / ".cache" / "omnitune" / "real-vllm-0.30.0"
ANSWERS_CACHE = Path.home() / ".cache" / "omnitune" / "real-answers"


def cases() -> dict:
    return json.loads(CASES.read_text())


def real_venv() -> Path:
    return Path(os.environ.get("OMNITUNE_REAL_VLLM_VENV") or DEFAULT_VENV)


def answers_key(model: str) -> str:
    """What the real answers depend on: the probe, the cases, the model folder (its path too: the real server hides
    a path under /tmp or /root in its error messages, not one under /work) and its files, and every package (name
    and version) in the real venv. The same key gives the same answers: the probe is deterministic (tests/
    test_emulator_real_contract.py compares them with the recorded ones on every run)."""
    h = hashlib.sha256(model.encode() + b"\0")
    for f in [HELPER, CASES, *sorted(p for p in Path(model).rglob("*") if p.is_file())]:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    h.update("\n".join(sorted(p.name for p in real_venv().glob("lib/python*/site-packages/*.dist-info"))).encode())
    return h.hexdigest()[:32]


def ask_real(model: str, out: Path, timeout_s: float = 1200) -> dict:
    """All real answers from ONE real Python process (importing vLLM costs ~35 s or more of CPU), kept in
    ~/.cache/omnitune/real-answers under ``answers_key`` so that a later run on the same machine with the same
    inputs reads them instead (OMNITUNE_REAL_ANSWERS_REFRESH=1 asks the real stack again)."""
    cached = ANSWERS_CACHE / f"{answers_key(model)}.json"
    if cached.is_file() and not os.environ.get("OMNITUNE_REAL_ANSWERS_REFRESH"):
        return json.loads(cached.read_text())
    python = real_venv() / "bin" / "python"
    done = subprocess.run([str(python), str(HELPER), str(CASES), model, str(out)], capture_output=True, text=True,
                          timeout=timeout_s)
    if done.returncode != 0 or not out.is_file():
        raise RuntimeError(f"real_answers.py exited {done.returncode}:\n{done.stderr[-3000:]}")
    answers = out.read_text().replace(model, "MODEL")
    try:  # written whole, then renamed: a concurrent run never reads half a file
        ANSWERS_CACHE.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(answers)
        tmp.replace(cached)
    except OSError:
        pass  # a read-only home: asked again next time
    return json.loads(answers)


def emulator_startup(model: str) -> dict:
    """The emulator's verdict for every startup case (MODEL replaced by ``model``)."""
    out = {}
    for case in cases()["startup"]:
        argv = ["serve", *(model if a == "MODEL" else a for a in case["argv"])]
        v = startup.decide(argv)
        out[case["id"]] = {"stage": v.stage, "exit_code": v.exit_code,
                           "error": v.error.replace(model, "MODEL") if v.error else None,
                           "config": summary(v.ns, v.cfg) if v.stage == "ok" and v.cfg else None}
    return out


def summary(ns, cfg: w.Config) -> dict:
    """The emulator's reading of an accepted argv, in the real OmniDiffusionConfig's fields."""
    key = w.LOSSY_CACHE_KEY.get(cfg.cache_backend or "")
    threshold = {key: cfg.cache_config.get(key, {"tea_cache": None, "cache_dit": 0.24}[cfg.cache_backend or ""])
                 } if key else {}
    return {"world_size": cfg.world_size, "ulysses_degree": cfg.usp, "ring_degree": cfg.ring,
            "cfg_parallel_size": cfg.cfg, "tensor_parallel_size": cfg.tp, "use_hsdp": cfg.hsdp,
            "enforce_eager": cfg.eager, "quantization": ns.quantization.strip().lower() if ns.quantization else None,
            "cache_backend": cfg.cache_backend or "none", "cache_threshold": threshold,
            "enable_cpu_offload": cfg.cpu_offload and not cfg.layerwise, "enable_layerwise_offload": cfg.layerwise}


def pydantic_head(text: str) -> str:
    """A pydantic ValidationError without its input echo: header and the error message lines."""
    return "\n".join(line.split(" [type=")[0] for line in text.split("\n") if "errors.pydantic.dev" not in line)


def startup_problems(case_id: str, real: dict, emu: dict) -> list[str]:
    out = []
    if (real["stage"], real["exit_code"]) != (emu["stage"], emu["exit_code"]):
        return [f"{case_id}: real {real['stage']} (exit {real['exit_code']}): {real.get('error')!r}; emulator "
                f"{emu['stage']} (exit {emu['exit_code']}): {emu.get('error')!r}"]
    if real["stage"] == "parse":
        want = real.get("stderr") or real["error"]
        if want != emu["error"]:
            out.append(f"{case_id}: argparse output differs:\n  real {want!r}\n  emu  {emu['error']!r}")
    elif real["stage"] != "ok":
        if pydantic_head(real["error"]) != pydantic_head(emu["error"] or ""):
            out.append(f"{case_id}: refusal text differs:\n  real {real['error']!r}\n  emu  {emu['error']!r}")
    else:
        cfg = dict(real["config"])
        key = w.LOSSY_CACHE_KEY.get(cfg["cache_backend"])
        cfg["cache_threshold"] = {key: (cfg.pop("cache_config") or {}).get(key)} if key else {}
        cfg.pop("cache_config", None)
        for field, value in cfg.items():
            if emu["config"].get(field) != value:
                out.append(f"{case_id}: {field} read as {emu['config'].get(field)!r}, real {value!r}")
    return out


def emulator_http(base_url: str) -> dict:
    """The emulator's answers to every HTTP case, over a socket, as the real helper records them."""
    import httpx
    out = {}
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for case in cases()["http"]:
            kwargs = {k: case[k] for k in ("json", "content", "headers", "params") if k in case}
            if "files" in case:
                kwargs["files"] = {k: (None, v) for k, v in case["files"].items()}
            r = client.request(case["method"], case["path"], **kwargs)
            try:
                body = r.json()
            except ValueError:
                body = None
            out[case["id"]] = {"status": r.status_code, "content_type": r.headers.get("content-type"),
                               "allow": r.headers.get("allow"), "json": body}
    return out


def _entries(message: str) -> list:
    """The per-error lines of a "N validation errors:" message, as comparable tuples, sorted."""
    rows = []
    for line in message.split("\n")[1:]:
        try:
            e = ast.literal_eval(line.strip())
            rows.append((e.get("type"), e.get("loc"), e.get("msg"), e.get("input"), json.dumps(e.get("ctx"))))
        except (ValueError, SyntaxError):
            rows.append((line.strip(),))
    return sorted(rows, key=str)


def http_problems(case_id: str, real: dict, emu: dict) -> list[str]:
    out = []
    for key in ("status", "allow"):
        if real.get(key) != emu.get(key):
            out.append(f"{case_id}: {key} real {real.get(key)!r}, emulator {emu.get(key)!r}")
    if (real.get("content_type") or "").split(";")[0] != (emu.get("content_type") or "").split(";")[0]:
        out.append(f"{case_id}: content type real {real.get('content_type')!r}, emulator {emu.get('content_type')!r}")
    rj, ej = real.get("json"), emu.get("json")
    if not isinstance(rj, dict) or not isinstance(ej, dict):
        return out + ([f"{case_id}: body real {rj!r}, emulator {ej!r}"] if rj != ej else [])
    if set(rj) != set(ej):
        return out + [f"{case_id}: body keys real {sorted(rj)}, emulator {sorted(ej)}"]
    if "error" in rj:
        r, e = rj["error"], ej["error"]
        for key in ("type", "code", "param"):
            if r.get(key) != e.get(key):
                out.append(f"{case_id}: error.{key} real {r.get(key)!r}, emulator {e.get(key)!r}")
        rm, em = r.get("message") or "", e.get("message") or ""
        same = (rm.split("\n")[0] == em.split("\n")[0] and _entries(rm) == _entries(em)) if " validation error" in \
            rm.split("\n")[0] else rm == em
        if not same:
            out.append(f"{case_id}: error.message differs:\n  real {rm!r}\n  emu  {em!r}")
    elif case_id == "models":
        rm, em = rj["data"][0], ej["data"][0]
        for key in ("id", "object", "owned_by", "root", "parent", "max_model_len"):
            if rm.get(key) != em.get(key):
                out.append(f"{case_id}: data[0].{key} real {rm.get(key)!r}, emulator {em.get(key)!r}")
        if set(rm) != set(em) or set(rm["permission"][0]) != set(em["permission"][0]):
            out.append(f"{case_id}: model fields real {sorted(rm)}, emulator {sorted(em)}")
    elif rj != ej:
        out.append(f"{case_id}: body real {rj!r}, emulator {ej!r}")
    return out
