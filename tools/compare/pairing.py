"""Pair the measured outputs of two benchmark runs by prompt, seed, size and index, refusing mismatches.

Two runs are comparable only when they asked for the same pictures: the same prompts, seeds, sizes and
the same request parameters (steps, guidance, negative prompt, frames, fps, extra body). Steps may differ
only when asked (``across_steps``, to judge "fewer steps" on purpose), other parameters only when named in
``allow_differences``. Everything wrong is said in one refusal, so the agent fixes it in one go.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnitune.tools.errors import InvalidRequestError, NotFoundError
from omnitune.tools.store import Store
from omnitune.tools.workspace import inside

# request fields that never change the pixels (how the answer is sent, what is reported)
NEUTRAL_PARAMS = {"prompt", "seed", "size", "n", "response_format", "return_stage_metrics"}
Key = tuple[str, int, str, int]  # prompt, seed, size "WxH", index within the request


@dataclass(frozen=True)
class Output:
    prompt: str
    seed: int
    size: str
    n_index: int
    kind: str
    path: Path
    width: int | None = None
    height: int | None = None
    frames: int | None = None


@dataclass
class RunInfo:
    run_id: str
    run_dir: Path
    summary: dict
    workload: dict
    data: dict
    outputs: dict[Key, Output]
    params: dict[Key, dict[str, Any]] = field(default_factory=dict)


def load_run(store: Store, run_id: str) -> RunInfo:
    """A run's measured, saved outputs and the exact request behind each (first occurrence of each key)."""
    row = store.query_one("SELECT * FROM runs WHERE id = ?", (run_id,))
    if row is None:
        recent = [r["id"] for r in store.query("SELECT id FROM runs ORDER BY created_at DESC LIMIT 5")]
        raise NotFoundError(f"no benchmark run {run_id!r}.", f"use a run_id returned by benchmark; recent: {recent}.")
    if row["status"] == "running":  # its outputs are still coming: a comparison now would judge half a run
        raise InvalidRequestError(f"run {run_id} is still running.",
                                  "wait for its job (job_wait) or cancel it (job_cancel), then compare.")
    run_dir = Path(row["run_dir"])
    rows = store.query(
        "SELECT o.*, r.prompt, r.params FROM outputs o "
        "JOIN requests r ON r.run_id = o.run_id AND r.idx = o.request_idx "
        "WHERE o.run_id = ? AND r.phase = 'measured' ORDER BY o.request_idx, o.n_index", (run_id,))
    info = RunInfo(run_id, run_dir, json.loads(row["summary"] or "{}"), json.loads(row["workload"] or "{}"),
                   json.loads(row["data"] or "{}"), {})
    for r in rows:
        params = json.loads(r["params"] or "{}")
        size = params.get("size") or f"{r['width']}x{r['height']}"
        key = (r["prompt"], r["seed"], size, r["n_index"])
        if key in info.outputs:
            continue
        info.outputs[key] = Output(r["prompt"], r["seed"], size, r["n_index"], r["kind"],
                                   inside(run_dir, run_dir / r["path"]), r["width"], r["height"], r["frames"])
        info.params[key] = params
    if not info.outputs:
        raise InvalidRequestError(f"run {run_id} has no saved measured outputs to compare.",
                                  "benchmark with save_outputs=true and at least one successful measured request.")
    return info


def _describe(keys: set[Key]) -> str:
    k = sorted(keys, key=str)[0]
    return f"{len(keys)} (e.g. prompt {k[0][:40]!r}, seed {k[1]}, size {k[2]}, index {k[3]})"


def _param_differences(base: RunInfo, cand: RunInfo, keys: list[Key], allowed: set[str]) -> dict[str, tuple]:
    """Request parameters that differ between paired requests: name -> (baseline value, candidate value)."""
    found: dict[str, tuple] = {}
    for k in keys:
        a, b = base.params.get(k, {}), cand.params.get(k, {})
        for name in (set(a) | set(b)) - NEUTRAL_PARAMS - allowed:
            if a.get(name) != b.get(name) and name not in found:
                found[name] = (a.get(name), b.get(name))
    return found


def pair(base: RunInfo, cand: RunInfo, across_steps: bool = False,
         allow_differences: list[str] | None = None) -> list[tuple[Output, Output]]:
    """The (baseline, candidate) outputs that show the same picture, in a stable order; or one clear refusal."""
    allowed = set(allow_differences or []) | ({"num_inference_steps"} if across_steps else set())
    problems = []
    only_base = set(base.outputs) - set(cand.outputs)
    only_cand = set(cand.outputs) - set(base.outputs)
    if only_base or only_cand:
        problems.append(f"outputs do not match: only in baseline {_describe(only_base) if only_base else 0}, "
                        f"only in candidate {_describe(only_cand) if only_cand else 0}")
    keys = sorted(set(base.outputs) & set(cand.outputs), key=str)
    for name, (a, b) in sorted(_param_differences(base, cand, keys, allowed).items()):
        label = "steps differ" if name == "num_inference_steps" else f"{name} differs"
        problems.append(f"{label} ({a!r} vs {b!r})")
    kinds = {o.kind for o in base.outputs.values()} | {o.kind for o in cand.outputs.values()}
    if len(kinds) > 1:
        problems.append("one run made images and the other videos")
    for k in keys:
        a, b = base.outputs[k], cand.outputs[k]
        if a.frames and b.frames and a.kind == "video" and a.frames != b.frames:
            problems.append(f"frame counts differ ({a.frames} vs {b.frames} for prompt {k[0][:40]!r}, seed {k[1]})")
            break
    if problems:
        raise InvalidRequestError(f"runs {base.run_id} and {cand.run_id} are not comparable: {'; '.join(problems)}.",
                                  "benchmark both configurations with the same workload (prompts, seeds, sizes, "
                                  "steps, guidance, frames); pass across_steps=true to judge fewer steps on purpose, "
                                  "or allow_differences=[names] for other request parameters changed deliberately.")
    return [(base.outputs[k], cand.outputs[k]) for k in keys]
