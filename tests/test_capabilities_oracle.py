"""The analysis (vllm-omni's code read with ``ast``) against a second reading by EXECUTION.

``tests/oracle/ground_truth-<version>.json`` is written by ``tests/oracle/ground_truth.py`` run with the
real serving stack (vllm 0.30.0 + vllm-omni, CPU only): class attributes as Python resolves them, the cache
registries as filled at import, and refusals seen by constructing each pipeline with one feature on. Wherever
both readings answer they must agree; every remaining disagreement is listed here with its reason, and a
listed disagreement that no longer occurs fails too (the list cannot go stale).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omnitune.tools.capabilities import support_table
from omnitune.tools.settings import Settings

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / ".venv" / "vllm-omni-src"
ORACLE = REPO / "tests" / "oracle"
CELLS = ("ulysses_sp", "ring_sp", "cfg_parallel", "tensor_parallel", "layerwise_offload", "regional_compile", "hsdp",
         "vae_patch_parallel", "tea_cache", "cache_dit")

# (version, pipeline, method) -> why the execution table and the analysis differ, and who is right.
EXPLAINED = {
    ("0.30.0", "BooguImagePipeline", "ulysses_sp"):
        "platform, not model: construction on this CPU machine hits `if not current_omni_platform.is_cuda(): raise` "
        "(pipeline_boogu_image.py:398); on CUDA GPUs Ulysses is supported (the analysis is right for the target).",
    ("0.30.0", "BooguImageTurboPipeline", "ulysses_sp"): "same as BooguImagePipeline (shared validation).",
    ("0.30.0", "Magi2Pipeline", "cfg_parallel"):
        "topology, not the method: MAGI-2 is qualified for 1 (layerwise offload), 4 or 8 workers "
        "(pipeline_magi2.py:359); the probe uses 2 GPUs. cfg 2 x usp 2 = 4 workers is accepted.",
    ("0.30.0", "Magi2Pipeline", "ulysses_sp"): "same topology rule (2 workers probed; 4 or 8 accepted).",
    ("0.30.0", "Magi2Pipeline", "tensor_parallel"):
        "same topology rule; MAGI-2 builds no vLLM parallel linear layers, so TP has nothing to shard (unsupported).",
    ("0.30.0", "Magi2Pipeline", "vae_patch_parallel"):
        "vae_patch_parallel_size must equal the DiT world size (`not in (1, configured_world_size)`, "
        "pipeline_magi2.py:327): a size constraint, not a refusal; the 2-GPU probe has world size 1.",
}


def _table(tmp_path_factory, version: str):
    src = SRC / version
    assert (src / "vllm_omni" / "__init__.py").is_file(), f"run `bash tests/install_vllm_omni.sh` ({src} is missing)"
    ws = tmp_path_factory.mktemp(f"ws-{version}")
    return support_table(Settings.model_validate({"workspace": ws, "vllm_omni_source": src}))


@pytest.fixture(scope="session")
def tables(tmp_path_factory):
    """Each release parsed once for the whole module."""
    return {v: _table(tmp_path_factory, v) for v in ("0.30.0", "0.22.0", "0.32.0rc1")}


def _oracle(version: str) -> dict:
    return json.loads((ORACLE / f"ground_truth-{version}.json").read_text())


def _compare(table, oracle: dict) -> tuple[dict, dict[tuple[str, str], tuple[str, str, str]]]:
    rows = {r.pipeline_class: r for r in table.rows}
    agree: dict[str, list[int]] = {k: [0, 0] for k in CELLS}
    differ = {}
    for orow in oracle["rows"]:
        if orow["import_error"] or orow["pipeline_class"] not in rows:
            continue
        for key, want in orow["cells"].items():
            if want is None:
                continue
            got = rows[orow["pipeline_class"]].methods[key].status
            agree[key][1] += 1
            if got == want:
                agree[key][0] += 1
            else:
                differ[(orow["pipeline_class"], key)] = (got, want, orow["how"].get(key, ""))
    return agree, differ


@pytest.mark.parametrize("version", ["0.30.0", "0.22.0"])
def test_analysis_agrees_with_execution_wherever_both_answer(tables, version):
    oracle = _oracle(version)
    if oracle.get("import_error"):
        pytest.fail(f"the {version} execution table could not be built: {oracle['import_error']}")
    agree, differ = _compare(tables[version], oracle)
    compared = sum(n for _, n in agree.values())
    assert compared >= 250, f"too few cells compared ({compared}): the execution table lost its answers"
    explained = {(p, k) for v, p, k in EXPLAINED if v == version}
    unexplained = {pk: d for pk, d in differ.items() if pk not in explained}
    assert not unexplained, "\n".join(f"{p}.{k}: analysis {g}, execution {w} ({how})"
                                      for (p, k), (g, w, how) in sorted(unexplained.items()))
    stale = explained - set(differ)
    assert not stale, f"listed disagreements that no longer occur: {sorted(stale)}"


def test_the_execution_tables_cover_every_registered_pipeline(tables):
    for version in ("0.30.0", "0.22.0"):
        oracle = _oracle(version)
        names = {r["pipeline_class"] for r in oracle["rows"]}
        registered = {r.pipeline_class for r in tables[version].rows}
        assert names == registered, (version, sorted(names ^ registered))
        failed = [r["pipeline_class"] for r in oracle["rows"] if r["import_error"]]
        assert len(failed) <= 3, (version, failed)   # import errors are data, but most must import


@pytest.mark.parametrize("version", ["0.30.0", "0.22.0", "0.32.0rc1"])
def test_every_pipeline_is_answered_with_evidence_and_few_unknowns(tables, version):
    table = tables[version]
    root = Path(table.vllm_omni_path)
    assert table.vllm_omni_version == version and len(table.rows) >= 50
    assert not [r.pipeline_class for r in table.rows if r.error], "a registered pipeline could not be analysed"
    unknown = [(r.pipeline_class, k) for r in table.rows for k in CELLS if r.methods[k].status == "unknown"]
    assert len(unknown) <= 0.02 * len(table.rows) * len(CELLS), unknown
    lines: dict[str, int] = {}
    for r in table.rows:
        for key in CELLS:
            m = r.methods[key]
            if m.status == "unknown":
                assert m.notes, (r.pipeline_class, key)   # unknown always says why
                continue
            assert m.evidence, (r.pipeline_class, key)
            for ev in m.evidence + m.effect_evidence:
                path, line = ev.rsplit(":", 1)
                if path not in lines:
                    lines[path] = len((root / path).read_text(encoding="utf-8").splitlines())
                assert 1 <= int(line) <= lines[path], (r.pipeline_class, key, ev)
