"""The capability report: what the installed vLLM-Omni supports for one model, with evidence.

Every claim carries ``path:line`` evidence relative to the ``vllm_omni`` package folder, so an agent
(or a human) can open the line that decided it. Consumers (launch validation, plan, tune) read
``methods[key].status`` and ``constraints``; keep these fields stable.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

METHOD_KEYS: tuple[str, ...] = (
    "ulysses_sp", "ring_sp", "cfg_parallel", "tensor_parallel", "vae_patch_parallel", "hsdp",
    "expert_parallel", "regional_compile", "cpu_offload", "layerwise_offload", "tea_cache", "cache_dit", "fp8",
)

Status = Literal["supported", "unsupported", "rejected", "unknown"]

# The flags the optimisation guide names (online serving spelling); checked against the installed version.
GUIDE_FLAGS: tuple[str, ...] = (
    "--enforce-eager", "--usp", "--ring", "--cfg-parallel-size", "--tensor-parallel-size",
    "--vae-patch-parallel-size", "--use-hsdp", "--enable-expert-parallel", "--enable-cpu-offload",
    "--enable-layerwise-offload", "--vae-use-slicing", "--vae-use-tiling", "--quantization", "--cache-backend",
    "--cache-config", "--flow-shift", "--boundary-ratio", "--gguf-model", "--ignored-layers",
)


class MethodSupport(BaseModel):
    """One optimisation method for one model."""

    status: Status = Field(description="supported | unsupported | rejected (the model raises when asked) | unknown.")
    evidence: list[str] = Field(default_factory=list,
                                description="'path:line' in the vllm_omni package that decided it.")
    notes: str = Field(default="", description="Why, in one or two sentences (and the reason when status is unknown).")
    takes_effect: Literal["yes", "no", "unknown"] | None = Field(
        default=None, description="Cache-DiT: whether an allowed method really changes the computation (status answers "
                          "whether vLLM-Omni lets the server run with it); None where the question does not apply.")
    effect_evidence: list[str] = Field(default_factory=list, description="'path:line' that decided takes_effect.")
    effect_notes: str = ""
    via: Literal["sp_plan", "model_code"] | None = Field(
        default=None, description="Ulysses / Ring where supported: through the DiT's _sp_plan hooks, or by the "
                                  "model's own code (no _sp_plan: vLLM-Omni still logs 'SP hooks not applied' at "
                                  "load, yet SP runs).")


class Constraint(BaseModel):
    """A rule the installed code enforces for this model (structured where the rule allows it)."""

    kind: Literal["divides", "one_of", "requires", "excludes", "implies", "raises"] = Field(
        description="divides: `parameter` must divide `value`; one_of: `parameter` in `values`; "
                    "requires/excludes/implies: a relation between settings; raises: the code refuses `condition`.")
    parameter: str | None = Field(default=None,
                                  description="The serve setting it constrains (ServeConfig/od_config name).")
    value: int | None = None
    values: list[int] | None = None
    methods: list[str] = Field(default_factory=list, description="Method keys the constraint concerns.")
    condition: str | None = Field(default=None, description="The source condition, as written in the code.")
    description: str
    evidence: list[str] = Field(default_factory=list)


class FlagCheck(BaseModel):
    """The guide's serve flags that this vLLM-Omni version accepts, and those it does not."""

    present: list[str] = Field(default_factory=list)
    missing: list[str] = Field(default_factory=list)
    source: str = Field(default="", description="How the installed flag list was derived.")


class DocsDisagreement(BaseModel):
    pipeline: str
    method: str
    docs_say: str
    code_says: str
    evidence: list[str] = Field(default_factory=list)


class CapabilityReport(BaseModel):
    """What vLLM-Omni (as installed) does for one model: per-method support, constraints, flags."""

    model: str = Field(description="What was asked for (folder, Hugging Face id or pipeline class).")
    model_path: str | None = Field(default=None, description="The local model folder used, if any.")
    pipeline_class: str = Field(description="The `_class_name` / registry key, e.g. QwenImagePipeline.")
    pipeline_impl: str = Field(description="vllm-omni's class for it (e.g. WanPipeline -> Wan22Pipeline).")
    pipeline_module: str = Field(description="Source file of that class, relative to the package.")
    dit_class: str | None = Field(default=None, description="The DiT (transformer) class the pipeline instantiates.")
    dit_module: str | None = None
    dit_classes: list[str] = Field(default_factory=list,
                                   description="All DiT classes (e.g. transformer and transformer_2).")
    vllm_omni_version: str
    located_via: str = Field(description="settings.vllm_omni_source | serving_python | omnitune_env.")
    vllm_omni_path: str
    methods: dict[str, MethodSupport]
    constraints: list[Constraint] = Field(default_factory=list)
    cache_backends: list[str] = Field(default_factory=list, description="--cache-backend values this version accepts.")
    quantization_methods: list[str] = Field(default_factory=list)
    quantization_note: str = ""
    uses_cfg: bool | None = Field(default=None,
                                  description="Whether the pipeline runs classifier-free guidance (None: unknown).")
    flags: FlagCheck = Field(default_factory=lambda: FlagCheck())
    docs_disagreements: list[DocsDisagreement] = Field(default_factory=list)


class SupportRow(BaseModel):
    """One pipeline of the support table: method -> status (evidence in the per-model report)."""

    pipeline_class: str
    pipeline_impl: str
    dit_class: str | None
    methods: dict[str, MethodSupport]
    uses_cfg: bool | None = None
    error: str | None = Field(default=None, description="Why this pipeline could not be analysed, if it could not.")


class SupportTable(BaseModel):
    vllm_omni_version: str
    located_via: str
    vllm_omni_path: str
    cache_backends: list[str]
    quantization_methods: list[str]
    rows: list[SupportRow]
