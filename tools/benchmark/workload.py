"""What a benchmark sends: the workload model, the built-in prompt set, and the request plan.

Every request carries an explicit seed (vLLM-Omni picks a random one otherwise, and outputs of two
runs could never be paired). Measured requests cycle over sizes x prompts x seeds in a fixed order,
so two runs of the same workload send the same requests and produce comparable outputs.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints, field_validator, model_validator

from omnitune.tools.strict import StrictModel

SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})", re.ASCII)  # fullmatch: `$` would accept a trailing newline
SIDE_MIN, SIDE_MAX, PIXELS_MAX = 16, 8192, 4096 * 4096
SEED_MAX = 2**63 - 1  # SQLite's largest integer (the server accepts up to 2**63)
# Request fields that set what a request produces: they have workload fields (checked there) or none to allow.
OWNED_FIELDS = {"prompt", "size", "seed", "n", "num_inference_steps", "guidance_scale", "negative_prompt",
                "num_frames", "fps"}
SHAPE_FIELDS = {"width", "height", "short_edge", "aspect_ratio", "seconds", "num_outputs_per_prompt",
                "num_images_per_prompt", "num_videos_per_prompt", "max_sequence_length"}
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
Prompt = Annotated[str, StringConstraints(max_length=100_000)]

# Varied on purpose: subjects, styles, lighting, text, fine detail and composition stress different
# parts of a diffusion model, so a lossy setting that hurts one kind of picture shows up.
BUILTIN_PROMPTS: list[str] = [
    "A red fox sitting in fresh snow at dawn, soft golden light, shallow depth of field, photorealistic",
    "A bustling night market in Taipei, neon signs, steam rising from food stalls, wet reflective pavement",
    "An isometric illustration of a tiny cozy library inside a tree trunk, warm lamps, pastel colours",
    "Close-up portrait of an elderly fisherman with weathered skin and a knitted cap, dramatic side light",
    "A minimalist poster with the words 'OPEN LATE' in bold sans-serif letters over a deep blue background",
    "A watercolour painting of a mountain lake with pine trees and drifting morning fog",
    "A futuristic electric motorcycle on a salt flat, studio product shot, chrome and matte black, 35mm",
    "A bowl of ramen with a soft-boiled egg, chashu and scallions, top-down food photography",
    "A herd of wild horses galloping across a dusty plain at sunset, motion blur, wide angle",
    "A macro photograph of a dew-covered spider web with tiny water droplets refracting the light",
    "A medieval castle on a cliff during a thunderstorm, lightning, crashing waves, oil painting",
    "A cute robot watering plants on a sunny apartment balcony, 3D render, soft shadows",
]

Task = Literal["text-to-image", "text-to-video"]


def parse_size(text: str) -> tuple[int, int]:
    m = SIZE.fullmatch(text)
    if not m:
        raise ValueError(f"size {text!r} is not WIDTHxHEIGHT (e.g. '1024x1024')")
    width, height = int(m.group(1)), int(m.group(2))
    if not (SIDE_MIN <= width <= SIDE_MAX and SIDE_MIN <= height <= SIDE_MAX):
        raise ValueError(f"size {text!r}: each side must be between {SIDE_MIN} and {SIDE_MAX} pixels")
    if width * height > PIXELS_MAX:
        raise ValueError(f"size {text!r} is {width * height} pixels; at most {PIXELS_MAX} pixels (4096x4096)")
    return width, height


def _shape_fields(extra_body: dict[str, Any]) -> list[str]:
    """Fields of extra_body (and of its extra_params, passed to the pipeline) that would bypass the size checks."""
    found = [k for k in extra_body if k in SHAPE_FIELDS]
    nested = extra_body.get("extra_params")
    if isinstance(nested, str):
        import json
        try:
            nested = json.loads(nested)
        except ValueError:
            nested = None
    if isinstance(nested, dict):
        found += [f"extra_params.{k}" for k in nested if k in SHAPE_FIELDS | OWNED_FIELDS]
    return sorted(found)


class Workload(StrictModel):
    """One benchmark workload. Latency mode: concurrency 1, no request_rate."""

    task: Task = Field("text-to-image", description="text-to-image (POST /v1/images/generations, JSON) or "
                                                     "text-to-video (POST /v1/videos, multipart).")
    prompts: list[Prompt] | None = Field(None, max_length=1000,
                                         description="Your prompts; empty/None uses the built-in varied set.")
    prompt_count: int = Field(4, ge=1, le=len(BUILTIN_PROMPTS),
                              description="How many built-in prompts to use when `prompts` is not given.")
    sizes: list[str] = Field(default_factory=lambda: ["1024x1024"], min_length=1,
                             description="Output sizes 'WIDTHxHEIGHT'; each is warmed up before timing.")
    num_inference_steps: int | None = Field(None, ge=1, le=200, description="Denoising steps (None: model default).")
    guidance_scale: float | None = Field(None, ge=0, le=20, description="CFG scale (None: model default).")
    negative_prompt: Prompt | None = None
    seeds: list[Seed] = Field(default_factory=lambda: [42], min_length=1, max_length=1000,
                              description="Seeds (0 to 2**63-1), always sent; outputs are paired across runs by "
                                          "prompt and seed.")
    n: int = Field(1, ge=1, le=10, description="Images per request (text-to-image only).")
    num_frames: int | None = Field(None, ge=1, le=2048,
                                   description="Video frames (text-to-video, at most 2048; None: model default).")
    fps: float | None = Field(None, ge=1, le=240, description="Video frames per second (text-to-video).")
    extra_body: dict[str, Any] = Field(default_factory=dict,
                                       description="Further request fields sent as is (e.g. true_cfg_scale, "
                                                   "flow_shift); must not repeat a field above nor set the "
                                                   "output's shape (width, height, ...: use sizes).")
    concurrency: int = Field(1, ge=1, le=256, description="Requests in flight at most (1 = latency mode).")
    request_rate: float | None = Field(None, ge=0.01, le=10000,
                                       description="Poisson arrivals, requests/s, at least 0.01 (None: as fast as "
                                                   "concurrency allows).")
    warmup: int = Field(1, ge=0, le=20, description="Untimed requests per measured size before timing "
                                                    "(torch.compile compiles per shape).")
    measured: int | None = Field(8, ge=1, le=100000, description="Measured requests per repeat (with duration_s "
                                                                 "given too: at most this many).")
    duration_s: float | None = Field(None, gt=0, le=86400,
                                     description="Measure for this long per repeat instead of a count.")
    repeats: int = Field(1, ge=1, le=20, description="Measured phases, each reported separately and pooled.")
    timeout_s: float = Field(600, gt=0, le=7200, description="Per request, seconds, including video download.")
    on_failure: Literal["continue", "stop"] = Field("continue", description="Keep going after a failed request "
                                                                             "or end the run at the first one.")
    max_failures: int | None = Field(None, ge=1, description="End the run after this many failed requests.")
    video_mode: Literal["poll", "sync"] = Field("poll", description="poll: POST /v1/videos then fast polling; "
                                                                     "sync: POST /v1/videos/sync.")
    poll_initial_s: float = Field(0.005, gt=0, le=10, description="First poll delay for video jobs, seconds.")
    poll_max_s: float = Field(0.05, gt=0, le=10, description="Longest poll interval (bounds detection delay).")
    save_outputs: bool = Field(True, description="Save the first output of each (prompt, seed, size, index).")
    return_stage_metrics: bool = Field(False, description="Ask the server for detailed stage metrics.")
    arrival_seed: Seed = Field(0, description="Seed of the Poisson arrival times (request_rate).")

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, v: list[str]) -> list[str]:
        for s in v:
            parse_size(s)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Workload:
        if self.task == "text-to-video" and self.n != 1:
            raise ValueError("n > 1 is only for text-to-image; send more seeds instead")
        if self.duration_s is not None and "measured" not in self.model_fields_set:
            self.measured = None  # a duration alone decides; `measured` given too caps the count
        if self.measured is None and self.duration_s is None:
            raise ValueError("give `measured` (a count) or `duration_s`")
        if self.prompts is not None and not [p for p in self.prompts if p.strip()]:
            self.prompts = None
        clash = set(self.extra_body) & OWNED_FIELDS
        if clash:
            raise ValueError(f"extra_body repeats {sorted(clash)}: use the workload fields")
        shape = _shape_fields(self.extra_body)
        if shape:
            raise ValueError(f"extra_body sets {shape}, which would bypass the size and count bounds: use sizes "
                             "('WIDTHxHEIGHT'), n, num_frames and seeds instead")
        if self.poll_initial_s > self.poll_max_s:
            self.poll_initial_s = self.poll_max_s
        return self

    @property
    def prompt_list(self) -> list[str]:
        return [p for p in self.prompts if p.strip()] if self.prompts else BUILTIN_PROMPTS[: self.prompt_count]

    @property
    def is_video(self) -> bool:
        return self.task == "text-to-video"

    def request(self, prompt_index: int, seed: int, size: str) -> RequestSpec:
        """The exact parameters of one request (what is sent and what is stored)."""
        prompt = self.prompt_list[prompt_index]
        params: dict[str, Any] = {"prompt": prompt, "size": size, "seed": seed}
        optional = {"num_inference_steps": self.num_inference_steps, "guidance_scale": self.guidance_scale,
                    "negative_prompt": self.negative_prompt}
        if self.is_video:
            optional.update(num_frames=self.num_frames, fps=self.fps)
        else:
            params["n"] = self.n
            params["response_format"] = "b64_json"
        params.update({k: v for k, v in optional.items() if v is not None})
        if self.return_stage_metrics:
            params["return_stage_metrics"] = True
        params.update(self.extra_body)
        width, height = parse_size(size)
        return RequestSpec(prompt_index=prompt_index, seed=seed, size=size, width=width, height=height,
                           params=params)

    def warmup_plan(self) -> Iterator[RequestSpec]:
        """``warmup`` requests per size, at the measured shape, with the first prompt and seed."""
        for size in self.sizes:
            for i in range(self.warmup):
                yield self.request(i % len(self.prompt_list), self.seeds[0], size)

    def measured_plan(self) -> Iterator[RequestSpec]:
        """Endless cycle over sizes x prompts x seeds (the runner stops it by count or duration)."""
        combos = [(s, p, seed) for s in self.sizes for p in range(len(self.prompt_list)) for seed in self.seeds]
        for size, p, seed in itertools.cycle(combos):
            yield self.request(p, seed, size)


class RequestSpec(BaseModel):
    prompt_index: int
    seed: int
    size: str
    width: int
    height: int
    params: dict[str, Any] = Field(description="The exact request fields sent to the server.")

    @property
    def shape(self) -> str:
        return self.size

    def output_name(self, n_index: int, ext: str, with_size: bool) -> str:
        """``outputs/p003-s42-n0.png`` (``-WxH`` added when the workload has several sizes)."""
        suffix = f"-{self.size}" if with_size else ""
        return f"outputs/p{self.prompt_index:03d}-s{self.seed}-n{n_index}{suffix}.{ext}"
