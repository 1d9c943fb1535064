"""Pair the measured outputs of two benchmark runs by prompt, seed, size and index, refusing mismatches.

Two runs are comparable only when they asked for the same pictures: same prompts, seeds, sizes and
steps (steps may differ only when asked, to judge "fewer steps" on purpose).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tools.errors import InvalidRequestError, NotFoundError
from tools.store import Store


@dataclass(frozen=True)
class Output:
    prompt: str
    seed: int
    size: str
    n_index: int
    kind: str
    path: Path


@dataclass
class RunInfo:
    run_id: str
    run_dir: Path
    summary: dict
    outputs: dict[tuple, Output]
    steps: set
    guidance: set


def load_run(store: Store, run_id: str) -> RunInfo:
    row = store.query_one("SELECT * FROM runs WHERE id = ?", (run_id,))
    if row is None:
        recent = [r["id"] for r in store.query("SELECT id FROM runs ORDER BY created_at DESC LIMIT 5")]
        raise NotFoundError(f"no benchmark run {run_id!r}.", f"use a run_id returned by benchmark; recent: {recent}.")
    run_dir = Path(row["run_dir"])
    rows = store.query(
        "SELECT o.*, r.prompt, r.params FROM outputs o JOIN requests r ON r.run_id = o.run_id AND r.idx = o.request_idx "
        "WHERE o.run_id = ? AND r.phase = 'measured' ORDER BY o.request_idx, o.n_index", (run_id,))
    outputs: dict[tuple, Output] = {}
    steps, guidance = set(), set()
    for r in rows:
        params = json.loads(r["params"] or "{}")
        size = params.get("size") or f"{r['width']}x{r['height']}"
        steps.add(params.get("num_inference_steps"))
        guidance.add(params.get("guidance_scale"))
        out = Output(r["prompt"], r["seed"], size, r["n_index"], r["kind"], run_dir / r["path"])
        outputs.setdefault((out.prompt, out.seed, out.size, out.n_index), out)
    if not outputs:
        raise InvalidRequestError(f"run {run_id} has no saved measured outputs to compare.",
                                  "benchmark with save_outputs=true and at least one successful measured request.")
    return RunInfo(run_id, run_dir, json.loads(row["summary"] or "{}"), outputs, steps, guidance)


def pair(base: RunInfo, cand: RunInfo, across_steps: bool) -> list[tuple[Output, Output]]:
    problems = []
    if base.steps != cand.steps and not across_steps:
        problems.append(f"steps differ ({sorted(map(str, base.steps))} vs {sorted(map(str, cand.steps))})")
    if base.guidance != cand.guidance:
        problems.append(f"guidance differs ({base.guidance} vs {cand.guidance})")
    only_base = set(base.outputs) - set(cand.outputs)
    only_cand = set(cand.outputs) - set(base.outputs)
    if only_base or only_cand:
        def describe(keys: set) -> str:
            k = sorted(keys, key=str)[0]
            return f"{len(keys)} (e.g. prompt {k[0][:40]!r}, seed {k[1]}, size {k[2]}, index {k[3]})"
        problems.append(f"outputs do not match: only in baseline {describe(only_base) if only_base else 0}, "
                        f"only in candidate {describe(only_cand) if only_cand else 0}")
    kinds = {o.kind for o in base.outputs.values()} | {o.kind for o in cand.outputs.values()}
    if len(kinds) > 1:
        problems.append("one run made images and the other videos")
    if problems:
        raise InvalidRequestError(f"runs {base.run_id} and {cand.run_id} are not comparable: {'; '.join(problems)}.",
                                  "benchmark both configurations with the same workload (prompts, seeds, sizes, "
                                  "steps); pass across_steps=true to judge fewer steps on purpose.")
    return [(base.outputs[k], cand.outputs[k]) for k in sorted(base.outputs, key=str)]
