"""One test per class of mistake the capability analysis used to make (issue 14), on the real sources.

Each asserts the decision and the line that decided it, read from vllm-omni's code (paths relative to
the vllm_omni package of the release named). The sources are parsed once per release for the module.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from omnitune.tools.capabilities import inspect_model
from omnitune.tools.settings import Settings

SRC = Path(__file__).resolve().parents[1] / ".venv" / "vllm-omni-src"


@pytest.fixture(scope="module")
def omni(tmp_path_factory):
    made: dict[str, Settings] = {}

    def get(version: str = "0.30.0") -> Settings:
        if version not in made:
            made[version] = Settings.model_validate({"workspace": tmp_path_factory.mktemp(f"cells-{version}"),
                                                     "vllm_omni_source": SRC / version})
        return made[version]
    return get


def cell(settings: Settings, arch: str, key: str):
    return inspect_model(settings, arch).methods[key]


@pytest.mark.parametrize("arch,dit,how", [
    ("LTX2Pipeline", "LTX2VideoTransformer3DModel", "the only class of ltx2/ with the DiT markers"),
    ("BagelPipeline", "Qwen2MoTModel", "_dit_modules 'language_model.model' followed through the classes"),
    ("Magi2Pipeline", "Magi2PreviewTransformer", "imported inside __init__"),
    ("LongCatVideoAvatarPipeline", "LongCatVideoAvatarTransformer3DModel", "factory returning model.eval()"),
    ("HiDreamO1ImagePipeline", "HiDreamO1TextModel", "dotted _dit_modules"),
])
def test_the_dit_is_resolved_where_the_pipeline_builds_it_indirectly(omni, arch, dit, how):
    report = inspect_model(omni(), arch)
    assert report.dit_class == dit, how
    assert all(report.methods[k].status != "unknown" for k in ("hsdp", "regional_compile", "layerwise_offload"))


def test_a_pipeline_without_any_dit_attribute_gets_definite_answers(omni):
    report = inspect_model(omni(), "Gr00tN1d7Pipeline")
    assert report.dit_class is None
    assert {report.methods[k].status for k in ("hsdp", "regional_compile", "ulysses_sp", "tensor_parallel")} \
        == {"unsupported"}
    assert "assigns none of the DiT attributes" in report.methods["hsdp"].notes
    # the generic Cache-DiT path needs pipeline.transformer: it raises at start-up
    assert report.methods["cache_dit"].status == "rejected" and report.methods["cache_dit"].takes_effect == "no"


def test_cache_dit_answers_allowed_and_separately_whether_it_takes_effect(omni):
    s = omni()
    zimage = cell(s, "ZImagePipeline", "cache_dit")       # generic path: allowed, effect up to the cache-dit library
    assert (zimage.status, zimage.takes_effect) == ("supported", "unknown")
    assert zimage.evidence[0].startswith("diffusion/cache/cachedit/backend.py:") and zimage.effect_notes
    wan = cell(s, "WanPipeline", "cache_dit")             # vllm-omni's own enabler for the runtime class
    assert (wan.status, wan.takes_effect) == ("supported", "yes")
    assert wan.effect_evidence[0].startswith("diffusion/cache/cachedit/model_specific.py:")
    nextstep = cell(s, "NextStep11Pipeline", "cache_dit")  # _NO_CACHE_ACCELERATION: runs, cache switched off
    assert (nextstep.status, nextstep.takes_effect) == ("unsupported", "no")
    anima = cell(s, "AnimaPipeline", "cache_dit")          # the model refuses to start with it
    assert (anima.status, anima.takes_effect) == ("rejected", "no")


@pytest.mark.parametrize("arch,status,where", [
    ("LTX2Pipeline", "supported", "diffusion/models/ltx2/ltx2_components.py:"),          # model-side VAE split
    ("Magi2Pipeline", "supported", "diffusion/models/magi2/pipeline_magi2.py:"),
    ("SanaVideoPipeline", "supported", "diffusion/models/sana_video/pipeline_sana_video.py:"),  # typed parameter
    ("HunyuanImage3ForCausalMM", "supported", "diffusion/models/hunyuan_image3/pipeline_hunyuan_image3.py:402"),
    ("MiniMaxH3Pipeline", "supported", "diffusion/models/minimax_h3/"),
    ("AnimaPipeline", "unsupported", "diffusion/models/anima/pipeline_anima.py:328"),      # attached in load_weights
    ("SanaWmPipeline", "unsupported", "diffusion/models/sana_wm/pipeline_sana_wm.py:459"),  # diffusers VAE
])
def test_vae_patch_parallel_follows_the_vae_the_engine_sees(omni, arch, status, where):
    m = cell(omni(), arch, "vae_patch_parallel")
    assert m.status == status and m.evidence[0].startswith(where), m


def test_a_refusal_under_another_condition_is_a_constraint_not_a_rejection(omni):
    boogu = inspect_model(omni(), "BooguImagePipeline")
    assert boogu.methods["cfg_parallel"].status == "supported"       # refused only together with SP
    both = [c for c in boogu.constraints if c.parameter == "cfg_parallel_size" and c.kind == "raises"]
    assert both and "sequence_parallel_size" in (both[0].condition or "")
    assert boogu.methods["ring_sp"].status == "rejected"              # inside `if sp > 1:` that ring implies
    hunyuan = inspect_model(omni(), "HunyuanImage3ForCausalMM")       # refused in step-execution mode only
    assert hunyuan.methods["cfg_parallel"].status == "supported"
    assert any((c.condition or "").startswith("step_execution and") and c.parameter == "cfg_parallel_size"
               for c in hunyuan.constraints)


@pytest.mark.parametrize("arch,key,where", [
    ("AnimaPipeline", "ulysses_sp", "pipeline_anima.py:164"),             # `x is not None and x > 1`
    ("AnimaPipeline", "layerwise_offload", "pipeline_anima.py:174"),      # resolve_offload_strategy(...) is not NONE
    ("LingBotWorldCausalDMDPipeline", "cfg_parallel", "lingbot_world/pipeline.py:256"),  # loop over a dict of sizes
    ("LingBotWorldCausalDMDPipeline", "vae_patch_parallel", "lingbot_world/pipeline.py:256"),
    ("Magi2Pipeline", "ring_sp", "magi2/pipeline_magi2.py:252"),          # problems collected, raised together
])
def test_refusals_in_loops_helpers_and_compound_tests_are_found(omni, arch, key, where):
    m = cell(omni(), arch, key)
    assert m.status == "rejected" and m.evidence[0].endswith(where), m


def test_cfg_parallel_is_judged_on_the_code_that_runs(omni):
    s = omni()
    ltx = cell(s, "LTX2Pipeline", "cfg_parallel")          # get_cfg_group imported under another name
    assert ltx.status == "supported" and ltx.evidence[0].startswith("diffusion/models/ltx2/")
    magi = cell(s, "Magi2Pipeline", "cfg_parallel")        # in the sampler the pipeline builds
    assert magi.status == "supported" and magi.evidence[0].startswith("diffusion/models/magi2/sampler_magi2.py:")
    dmd = cell(s, "WanT2VDMD2Pipeline", "cfg_parallel")    # DMD2 switches CFG off for every request
    assert dmd.status == "unsupported" and dmd.evidence[0].startswith("diffusion/models/dmd2/mixin.py:")
    placeholder = cell(omni("0.22.0"), "LTX23ImageToVideoPipeline", "cfg_parallel")  # sibling of LTX23Pipeline
    assert placeholder.status == "unsupported"


def test_sp_plan_on_the_instance_tp_layers_and_own_compile(omni):
    s = omni()
    sp = cell(s, "LTX2Pipeline", "ulysses_sp")             # self._sp_plan = self._build_sp_plan(...)
    assert sp.status == "supported" and sp.evidence[0].startswith("diffusion/models/ltx2/ltx2_transformer.py:")
    tp = cell(s, "NextStep11Pipeline", "tensor_parallel")  # layers built in another module of the folder
    assert tp.status == "supported"
    assert tp.evidence[0].startswith("diffusion/models/nextstep_1_1/modeling_nextstep_llama")
    assert cell(s, "OvisImagePipeline", "tensor_parallel").status == "unsupported"  # QKVParallelLinear(disable_tp=True)
    magi = cell(s, "Magi2Pipeline", "regional_compile")    # the pipeline's own setup_compile
    assert magi.status == "supported" and "setup_compile" in magi.notes


@pytest.mark.parametrize("version,arch,via", [
    ("0.30.0", "Magi2Pipeline", "model_code"),      # magi2/parallel.py drives the Ulysses group itself
    ("0.30.0", "BagelPipeline", "model_code"),
    ("0.32.0rc1", "BagelPipeline", "model_code"),
    ("0.30.0", "QwenImagePipeline", "sp_plan"),
    ("0.22.0", "WanPipeline", "sp_plan"),
])
def test_sequence_parallel_says_whether_the_hooks_or_the_models_own_code_apply_it(omni, version, arch, via):
    """The registry warns 'SP hooks not applied' for every DiT without _sp_plan, also where the model's own code
    runs SP: only ``via`` tells the tune whether that warning means SP is off."""
    m = cell(omni(version), arch, "ulysses_sp")
    assert (m.status, m.via) == ("supported", via), m
    if via == "model_code":
        assert "SP hooks not applied" in m.notes and "_sp_plan" not in m.evidence[0]
