"""inspect_model against the real vllm-omni 0.30.0 and 0.22.0 sources (read, never imported).

The expected tables were established by reading vllm-omni's code (paths relative to the vllm_omni
package of 0.30.0 unless noted), not by running the code under test. Cells: Y supported,
- unsupported, R rejected (the model raises when the feature is requested), ? unknown.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from omnitune.tools.capabilities import METHOD_KEYS, inspect_model, installed_serve_flags, support_table
from omnitune.tools.errors import CapabilityError, NotFoundError
from omnitune.tools.settings import Settings
from tests.conftest import FIXTURE_MODELS, REFERENCE

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / ".venv" / "vllm-omni-src"
CELL = {"Y": "supported", "-": "unsupported", "R": "rejected", "?": "unknown"}
KEYS = " ".join(METHOD_KEYS)

# columns:        usp ring cfg tp vaepp hsdp ep compile cpu layerwise tea cachedit fp8
EXPECTED_030 = {
    # z_image_transformer.py:648 _sp_plan, :636 _hsdp_shard_conditions, :629 _repeated_blocks, :630 layerwise attrs;
    # pipeline_z_image.py:227 DistributedAutoencoderKL; no CFG group in pipeline_z_image.py (batched CFG);
    # teacache/extractors.py:1554 "ZImageTransformer2DModel"; no Cache-DiT enabler or adapter config: vllm-omni
    # still lets it run with cache_dit (cachedit/backend.py generic path), whether it takes effect is the library's.
    "ZImagePipeline": ("ZImageTransformer2DModel", "Y Y - Y Y Y - Y Y Y Y Y Y"),
    # qwen_image_transformer.py:1001/1002/1008/1022 markers; :609 QKVParallelLinear; pipeline_qwen_image.py:347
    # DistributedAutoencoderKLQwenImage passed to a loader helper; extractors.py:1550.
    "QwenImagePipeline": ("QwenImageTransformer2DModel", "Y Y Y Y Y Y - Y Y Y Y Y Y"),
    # registry maps WanPipeline -> Wan22Pipeline; cachedit/model_specific.py:921 "Wan22Pipeline" enabler (runtime
    # class name); WanTransformer3DModel has no TeaCache extractor; pipeline_wan2_2.py:486 DistributedAutoencoderKLWan.
    "WanPipeline": ("WanTransformer3DModel", "Y Y Y Y Y Y - Y Y Y - Y Y"),
    # inherited markers: ming_zimage_transformer.py:21 MingZImageTransformer2DModel(ZImageTransformer2DModel);
    # TeaCache is keyed on the exact name, which is not registered (the base's is).
    "MingImagePipeline": ("MingZImageTransformer2DModel", "Y Y - Y Y Y - Y Y Y - Y Y"),
    # flux_transformer.py:758 FluxKontextTransformer2DModel(FluxTransformer2DModel): inherited markers, no _sp_plan
    # anywhere in flux_transformer.py; TeaCache extractor exists for FluxTransformer2DModel only (exact-name lookup).
    "FluxKontextPipeline": ("FluxKontextTransformer2DModel", "- - Y Y - Y - Y Y Y - Y Y"),
    # pipeline_flux.py:117 diffusers AutoencoderKL (not distributed); :477 predict_noise_maybe_with_cfg.
    "FluxPipeline": ("FluxTransformer2DModel", "- - Y Y - Y - Y Y Y Y Y Y"),
    # renamed marker: lingbot_video_transformer.py:702 `_layerwise_offload_blocks_attr = "blocks"` (deprecated
    # spelling still read at offloader/block_discovery.py:21).
    "LingBotVideoPipeline": ("LingBotVideoTransformer3DModel", "- - - - - - - Y Y Y - Y -"),
    # rejects: pipeline_boogu_image.py:383 tensor_parallel_size > 1, :416 use_hsdp, :418 cache_backend, :394 ring.
    # CFG parallel is refused only together with SP (:385-386): a constraint, not a rejection (was R before).
    "BooguImagePipeline": ("BooguImageTransformer2DModel", "Y R Y R - R - Y Y Y R R Y"),
    # custom SP without _sp_plan (transformer_sana_video.py uses the SP group); :60 ring_degree > 1 raises, :69
    # use_hsdp raises; pipeline_sana_video.py:278 cache_backend not in ("none", "cache_dit") raises (TeaCache).
    # pipeline_sana_video.py:346 the vae parameter is a DistributedAutoencoderKL{LTX2Video,Wan} (:60-71): VAE PP.
    "SanaVideoPipeline": ("SanaVideoTransformer3DModel", "Y R Y Y Y R - - Y Y R Y -"),
    # comment-only marker: pipeline_anima.py mentions _sp_plan only in a comment; the pipeline raises for CFG
    # parallel (:162), SP (:164, `x is not None and x > 1`), TP (:166), HSDP (:168), cache backends (:170),
    # quantization (:172) and any offload strategy (:174, layerwise too). The VAE is attached in load_weights
    # (:328), after registry.py's DistributedVaeMixin check at construction: VAE PP is ignored (was Y before).
    "AnimaPipeline": ("AnimaTransformer3DModel", "R R R R - R - Y R R R R R"),
    # custom SP implementation without the marker: bagel_transformer.py calls the SP group; the DiT is
    # _dit_modules "language_model.model": Qwen2MoTForCausalLM(...).model = Qwen2MoTModel (bagel_transformer.py:895).
    "BagelPipeline": ("Qwen2MoTModel", "Y Y Y Y Y Y - - Y Y Y Y Y"),
    # pipeline_hunyuan_image3.py:547/549/552 raise for SP, CFG parallel and cache backends only inside
    # _validate_step_request (step-execution mode): constraints, not rejections (were R before). FusedMoE -> EP.
    # :402 DistributedAutoencoderKLHunyuan, imported inside __init__ (was - before).
    "HunyuanImage3ForCausalMM": ("HunyuanImage3Model", "Y Y Y Y Y - Y - Y - Y Y Y"),
    # sd3_transformer.py:391 _cache_dit_adapter_config; no _sp_plan; no quant_config in its constructor.
    "StableDiffusion3Pipeline": ("SD3Transformer2DModel", "- - Y Y Y - - Y Y Y - Y -"),
    # pipeline_minimax_h3.py:836 cfg_parallel_size != 1 raises (CFG-distilled); teacache/backend.py:127 enabler.
    # its VAE MiniMaxH3VideoVAE is a DistributedVaeMixin (was - before).
    "MiniMaxH3Pipeline": ("MiniMaxH3DiTModel", "Y Y R Y Y Y - Y Y Y Y Y Y"),
    # registry.py:413 _NO_CACHE_ACCELERATION lists NextStep11Pipeline.
    # NextStepModel's layers are built from QKVParallelLinear in modeling_nextstep_llama.py:149 (was - before).
    "NextStep11Pipeline": ("NextStepModel", "- - Y Y - - - - Y Y - - -"),
    # pipeline_diffusers_adapter.py:238 _raise_unsupported_features: offload, TP, CFG parallel, SP, cache backends.
    # It holds a diffusers pipeline in self._pipeline and no DiT attribute the generic hooks look for: the
    # DiT-level methods have nothing to act on (were ? before).
    "DiffusersAdapterPipeline": (None, "R R R R - - - - R R R R -"),
}

# 0.22.0 (2026-06-08): different Cache-DiT layout (cache/cache_dit_backend.py), fewer markers.
EXPECTED_022 = {
    "ZImagePipeline": ("ZImageTransformer2DModel", "Y Y - Y Y Y - Y Y Y Y Y Y"),
    "QwenImagePipeline": ("QwenImageTransformer2DModel", "Y Y Y Y Y Y - Y Y Y Y Y Y"),
    "WanPipeline": ("WanTransformer3DModel", "Y Y Y Y Y Y - Y Y Y - Y Y"),
    # cache_dit_backend.py:2031 "FluxPipeline" enabler in 0.22.0
    "FluxPipeline": ("FluxTransformer2DModel", "- - Y Y - Y - Y Y Y Y Y Y"),
    # 0.22.0 FluxKontextPipeline has no CFG-parallel path and no Cache-DiT enabler
    "FluxKontextPipeline": ("FluxKontextTransformer2DModel", "- - - Y - Y - Y Y Y - Y Y"),
    "StableDiffusion3Pipeline": ("SD3Transformer2DModel", "- - Y Y Y - - Y Y Y - Y -"),
    # WanS2VTransformer3DModel has no _sp_plan in 0.22.0 (it gained one later)
    "WanS2VPipeline": ("WanS2VTransformer3DModel", "- - Y Y Y Y - Y Y Y - Y -"),
}


def make_settings(**fields) -> Settings:
    """Settings from field values (pyright reads the model's positional Field defaults as required)."""
    return Settings.model_validate(fields)


def settings_for(tmp_path: Path, version: str, **kw) -> Settings:
    return make_settings(workspace=tmp_path / "ws", vllm_omni_source=SRC / version, **kw)


@pytest.fixture
def omni030(tmp_path: Path) -> Settings:
    return settings_for(tmp_path, "0.30.0")


@pytest.fixture
def omni022(tmp_path: Path) -> Settings:
    return settings_for(tmp_path, "0.22.0")


def _check(table, expected):
    rows = {r.pipeline_class: r for r in table.rows}
    problems = []
    for arch, (dit, cells) in expected.items():
        row = rows[arch]
        if row.dit_class != dit:
            problems.append(f"{arch}: dit {row.dit_class} != {dit}")
        for key, cell in zip(METHOD_KEYS, cells.split()):
            if row.methods[key].status != CELL[cell]:
                problems.append(f"{arch}.{key}: {row.methods[key].status} != {CELL[cell]} ({row.methods[key].notes})")
    assert not problems, "\n".join(problems)


def test_fifteen_pipelines_of_0_30_0_match_what_their_code_says_cell_by_cell(omni030):
    table = support_table(omni030)
    assert table.vllm_omni_version == "0.30.0" and table.located_via == "settings.vllm_omni_source"
    assert len(EXPECTED_030) >= 15
    _check(table, EXPECTED_030)
    assert len(table.rows) == 73 and all(set(r.methods) == set(METHOD_KEYS) for r in table.rows)


def test_the_same_code_reads_the_older_0_22_0_release(omni022):
    table = support_table(omni022)
    assert table.vllm_omni_version == "0.22.0"
    _check(table, EXPECTED_022)
    assert "sea_cache" not in table.cache_backends and "gguf" in table.quantization_methods


def test_every_claim_carries_evidence_that_points_at_a_real_line(omni030):
    report = inspect_model(omni030, "SanaVideoPipeline")
    root = Path(report.vllm_omni_path)
    for key, m in report.methods.items():
        if m.status in ("supported", "rejected"):
            assert m.evidence, key
        for ev in m.evidence:
            path, line = ev.rsplit(":", 1)
            assert 1 <= int(line) <= len((root / path).read_text().splitlines()), ev
    ring = report.methods["ring_sp"]
    assert ring.evidence[0].startswith("diffusion/models/sana_video/transformer_sana_video.py:")
    assert "ring" in ring.notes.lower()


def test_pitfalls_are_explained_in_the_notes(omni030):
    ming = inspect_model(omni030, "MingImagePipeline")
    assert ming.methods["ulysses_sp"].evidence[0].startswith("diffusion/models/z_image/z_image_transformer.py:")
    assert "exact" in ming.methods["tea_cache"].notes and "ZImageTransformer2DModel" in ming.methods["tea_cache"].notes
    lingbot = inspect_model(omni030, "LingBotVideoPipeline")
    assert "deprecated" in lingbot.methods["layerwise_offload"].notes
    layerwise = lingbot.methods["layerwise_offload"].evidence
    assert any(e.startswith("diffusion/offloader/block_discovery.py") for e in layerwise)
    boogu = inspect_model(omni030, "BooguImagePipeline")
    tp = boogu.methods["tensor_parallel"].notes
    assert "raises" in tp and "Tensor parallelism" in tp


@pytest.mark.parametrize("folder,arch,dit,heads", [
    ("tiny-zimage", "ZImagePipeline", "ZImageTransformer2DModel", 2),
    ("tiny-qwenimage", "QwenImagePipeline", "QwenImageTransformer2DModel", 3),
    ("tiny-wan", "WanPipeline", "WanTransformer3DModel", 2),
])
def test_fixture_folders_resolve_and_read_head_counts_from_their_config(omni030, folder, arch, dit, heads):
    report = inspect_model(omni030, str(FIXTURE_MODELS / folder))
    assert (report.pipeline_class, report.dit_class) == (arch, dit)
    assert report.model_path == str((FIXTURE_MODELS / folder).resolve())
    tp = next(c for c in report.constraints if c.parameter == "tensor_parallel_size" and c.kind == "divides")
    assert tp.value == heads


def test_cfg_parallel_size_is_limited_to_two_branches_for_cfg_models(omni030):
    report = inspect_model(omni030, "QwenImagePipeline")
    cfg = [c for c in report.constraints if c.parameter == "cfg_parallel_size"]
    assert cfg and cfg[0].values == [1, 2] and report.uses_cfg is True


def test_a_hugging_face_id_is_found_in_the_local_cache_honouring_hf_home(omni030, tmp_path, monkeypatch):
    home = tmp_path / "hf"
    snap = home / "hub" / "models--Tongyi-MAI--Z-Image-Turbo" / "snapshots" / "abc123"
    shutil.copytree(FIXTURE_MODELS / "tiny-zimage", snap)
    monkeypatch.setenv("HF_HOME", str(home))
    report = inspect_model(omni030, "Tongyi-MAI/Z-Image-Turbo")
    assert report.pipeline_class == "ZImagePipeline" and report.model_path == str(snap)
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    assert inspect_model(omni030, "Tongyi-MAI/Z-Image-Turbo").pipeline_class == "ZImagePipeline"


def test_unknown_hub_id_without_network_says_where_it_looked(omni030):
    with pytest.raises(NotFoundError) as err:
        inspect_model(omni030, "nobody/no-such-model")
    text = str(err.value)
    assert "models--nobody--no-such-model" in text and "OMNITUNE_ALLOW_NETWORK" in text


def test_folder_without_model_index_is_a_clear_error(tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    with pytest.raises(CapabilityError) as err:  # the folder lies under a model root: only there is it looked at
        inspect_model(settings_for(tmp_path, "0.30.0", model_roots=[tmp_path]), str(folder))
    assert "model_index.json" in str(err.value) and "Fix:" in str(err.value)


def test_a_misspelt_class_gets_close_matches(omni030):
    with pytest.raises(CapabilityError) as err:
        inspect_model(omni030, "QwenImagePipelin")
    assert "did you mean QwenImagePipeline" in str(err.value) and "diffusion/registry.py" in str(err.value)


def test_vllm_omni_not_installed_says_what_was_looked_at(tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(CapabilityError) as err:
        inspect_model(make_settings(workspace=tmp_path / "ws", vllm_omni_source=empty), "ZImagePipeline")
    assert "holds no vllm_omni package" in str(err.value)
    with pytest.raises(CapabilityError) as err:
        inspect_model(make_settings(workspace=tmp_path / "ws"), "ZImagePipeline")
    assert "looked at" in str(err.value) and "OMNITUNE_SERVING_PYTHON" in str(err.value)


def test_the_serving_python_is_asked_without_importing_vllm(tmp_path):
    fake = tmp_path / "python"
    site = SRC / "0.22.0"
    fake.write_text(f"#!/bin/sh\nPYTHONPATH={site} exec {REPO / '.venv/bin/python'} \"$@\"\n")
    fake.chmod(0o755)
    report = inspect_model(make_settings(workspace=tmp_path / "ws", serving_python=fake), "ZImagePipeline")
    assert report.located_via == "serving_python" and report.vllm_omni_version == "0.22.0"


def test_installed_flags_of_0_30_0_are_exactly_the_real_cli(omni030):
    actions = json.loads((REFERENCE / "serve-args.json").read_text())
    assert installed_serve_flags(omni030) == {f for a in actions for f in a.get("flags", [])}


def test_guide_flags_missing_from_a_version_are_reported(omni030, omni022):
    report = inspect_model(omni030, "QwenImagePipeline")
    assert {"--gguf-model", "--ignored-layers"} <= set(report.flags.missing)
    assert {"--usp", "--ring", "--cfg-parallel-size", "--cache-backend", "--quantization"} <= set(report.flags.present)
    assert "--allgather-degree" in installed_serve_flags(omni030)
    assert "--allgather-degree" not in installed_serve_flags(omni022)


def test_cache_backends_and_quantization_methods_come_from_the_installed_code(omni030):
    report = inspect_model(omni030, "ZImagePipeline")
    assert {"tea_cache", "cache_dit", "mag_cache", "sea_cache", "step_cache"} <= set(report.cache_backends)
    assert {"int8", "mxfp8", "svdquant"} <= set(report.quantization_methods)
    assert "gguf" not in report.quantization_methods


def test_the_analysis_is_cached_and_invalidated_by_file_mtimes(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(SRC / "0.30.0" / "vllm_omni", src / "vllm_omni", ignore=shutil.ignore_patterns("__pycache__"))
    settings = make_settings(workspace=tmp_path / "ws", vllm_omni_source=src)
    assert inspect_model(settings, "ZImagePipeline").methods["hsdp"].status == "supported"
    cache_files = list((tmp_path / "ws" / "cache").glob("capabilities-0.30.0-*.json"))
    assert len(cache_files) == 1
    dit = src / "vllm_omni/diffusion/models/z_image/z_image_transformer.py"
    text = dit.read_text().replace("    _hsdp_shard_conditions = [_is_transformer_block]",
                                   "    # _hsdp_shard_conditions = [_is_transformer_block]  (comment only)")
    dit.write_text(text)
    os.utime(dit, (dit.stat().st_atime, dit.stat().st_mtime + 5))
    after = inspect_model(settings, "ZImagePipeline").methods["hsdp"]
    assert after.status == "unsupported", after


def test_reports_of_the_two_versions_differ_where_the_code_does(omni030, omni022):
    new = inspect_model(omni030, "WanS2VPipeline").methods["ulysses_sp"]
    old = inspect_model(omni022, "WanS2VPipeline").methods["ulysses_sp"]
    assert (new.status, old.status) == ("supported", "unsupported")


def test_docs_of_a_source_checkout_are_compared_with_the_code(tmp_path):
    checkout = tmp_path / "vllm-omni"
    shutil.copytree(SRC / "0.30.0" / "vllm_omni", checkout / "vllm_omni", ignore=shutil.ignore_patterns("__pycache__"))
    (checkout / "docs").mkdir()
    (checkout / "docs" / "support.md").write_text(
        "| Model | Ulysses SP | TeaCache | FP8 |\n|---|---|---|---|\n"
        "| `ZImagePipeline` | ✅ | ✅ | ✅ |\n"
        "| `WanPipeline` | ✅ | ✅ | ❌ |\n")
    settings = make_settings(workspace=tmp_path / "ws", vllm_omni_source=checkout)
    assert inspect_model(settings, "ZImagePipeline").docs_disagreements == []
    wan = inspect_model(settings, "WanPipeline").docs_disagreements
    assert {(d.method, d.code_says) for d in wan} == {("tea_cache", "unsupported"), ("fp8", "supported")}
    assert all("docs/support.md:4" in d.docs_say for d in wan)
