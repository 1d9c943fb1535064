"""compare_outputs on synthetic runs recorded through the real tables: metrics against independent reference
computations, refusals, verdict boundaries, pictures, the saved comparison and the speed/quality trade-off."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from mcp import Client
from PIL import Image

from omnitune.server.main import build_server
from omnitune.tools.compare import Thresholds, compare_runs
from omnitune.tools.compare.verdict import judge
from omnitune.tools.workspace import Workspace
from tests.synthetic_runs import Shot, picture, record_run, shots, summary, video

pytestmark = pytest.mark.anyio


@pytest.fixture
def ws(settings):
    workspace = Workspace.open(settings)
    yield workspace
    workspace.close()


async def compare(settings, a: str, b: str, **args):
    async with Client(build_server(settings)) as client:
        return await client.call_tool("compare_outputs", {"baseline_run": a, "candidate_run": b, **args})


# --- independent references (numpy/scipy written here, not scikit-image) -------------------------------------

def _gauss_filter(img: np.ndarray) -> np.ndarray:
    from scipy.ndimage import correlate
    x = np.arange(11) - 5
    g = np.exp(-(x ** 2) / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    return correlate(img, w, mode="reflect")


def ref_ssim_cs(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Wang et al. 2004 SSIM and mean contrast-structure, 11x11 Gaussian sigma 1.5, valid region."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = _gauss_filter(a), _gauss_filter(b)
    va, vb = _gauss_filter(a * a) - mu_a ** 2, _gauss_filter(b * b) - mu_b ** 2
    cov = _gauss_filter(a * b) - mu_a * mu_b
    lum = (2 * mu_a * mu_b + c1) / (mu_a ** 2 + mu_b ** 2 + c1)
    cs = (2 * cov + c2) / (va + vb + c2)
    return float((lum * cs)[5:-5, 5:-5].mean()), float(cs[5:-5, 5:-5].mean())


def ref_ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    weights = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333]
    out = 1.0
    for level, wgt in enumerate(weights):
        s, cs = ref_ssim_cs(a, b)
        out *= max(s if level == 4 else cs, 0.0) ** wgt
        h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
        a = a[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
        b = b[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    return out


def ref_psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * math.log10(255 ** 2 / np.mean((a.astype(float) - b.astype(float)) ** 2))


def y(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(float)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def decoded(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# --- metrics ---------------------------------------------------------------------------------------------------

async def test_reported_metrics_match_a_reference_computation_on_the_decoded_files(settings, ws):
    base = record_run(ws, shots(2, 1, 256, 192))
    cand = record_run(ws, [Shot(f"prompt {p}", 0, picture(f"prompt {p}", 0, 256, 192, 3.0 + 6 * p)) for p in (0, 1)])
    result = await compare(settings, base, cand)
    assert result.is_error is False, result.content
    pairs = result.structured_content["pair_results"]
    assert len(pairs) == 2
    for p in pairs:
        a, b = decoded(p["baseline_path"]), decoded(p["candidate_path"])
        assert abs(p["psnr_db"] - ref_psnr(a, b)) < 1e-3
        assert abs(p["ssim"] - ref_ssim_cs(y(a), y(b))[0]) < 1e-3
        assert abs(p["ms_ssim"] - ref_ms_ssim(y(a), y(b))) < 1e-3
        assert abs(p["mae"] - np.abs(a.astype(float) - b.astype(float)).mean()) < 1e-3
    assert pairs[0]["psnr_db"] > pairs[1]["psnr_db"] and pairs[0]["ms_ssim"] > pairs[1]["ms_ssim"]


def test_metrics_agree_with_the_reference_on_structured_and_blurred_images():
    from omnitune.tools.compare import metrics
    rng = np.random.default_rng(7)
    a = picture("a lighthouse", 3, 320, 200)
    blurred = np.asarray(Image.fromarray(a).resize((80, 50), Image.BILINEAR).resize((320, 200), Image.BICUBIC))
    shifted = np.roll(a, 3, axis=1)
    noisy = np.clip(a + rng.normal(0, 20, a.shape), 0, 255).astype(np.uint8)
    for b in (blurred, shifted, noisy):
        got = metrics.image_metrics(a, b)
        assert abs(got["psnr_db"] - ref_psnr(a, b)) < 1e-3
        assert abs(got["ssim"] - ref_ssim_cs(y(a), y(b))[0]) < 1e-3
        assert abs(got["ms_ssim"] - ref_ms_ssim(y(a), y(b))) < 1e-3
    small = metrics.image_metrics(a[:100, :100], noisy[:100, :100])
    assert small["ms_ssim"] is None and small["ssim"] < 1  # five scales need 176 px


async def test_increasing_deviation_gives_monotonically_worse_metrics_and_the_expected_verdicts(settings, ws):
    base = record_run(ws, shots(2, 2, 192, 192))
    sweep = []
    for noise in (0.0, 1.0, 5.0, 12.0, 40.0):
        cand = record_run(ws, shots(2, 2, 192, 192, noise))
        sweep.append((await compare(settings, base, cand)).structured_content)
    assert [c["verdict"] for c in sweep] == ["identical", "lossless-equivalent", "acceptable", "degraded", "degraded"]
    psnr = [c["psnr_db_min"] for c in sweep[1:]]
    ssim = [c["ssim_min"] for c in sweep]
    multi = [c["ms_ssim_min"] for c in sweep]
    assert psnr == sorted(psnr, reverse=True) and ssim == sorted(ssim, reverse=True)
    assert multi == sorted(multi, reverse=True) and multi[0] == 1.0
    assert sweep[0]["psnr_db_min"] is None and sweep[0]["counts"]["identical"] == 4
    assert [c["broken_pairs"] for c in sweep] == [0, 0, 0, 0, 4]  # 40 std: below vLLM-Omni's 20 dB smoke threshold


def test_verdict_boundaries_follow_the_thresholds():
    t = Thresholds()
    assert judge(math.inf, 1.0, True, t) == "identical"
    assert judge(40.0, 0.5, False, t) == "lossless-equivalent"
    assert judge(39.99, 0.90, False, t) == "acceptable"
    assert judge(39.99, 0.899, False, t) == "degraded"
    assert judge(29.99, 0.99, False, t) == "degraded"
    strict = Thresholds(acceptable_ssim=0.97, acceptable_psnr_db=35)
    assert judge(34.0, 0.99, False, strict) == "degraded" and judge(36.0, 0.98, False, strict) == "acceptable"
    with pytest.raises(ValueError, match="thresholds must satisfy"):
        Thresholds(lossless_psnr_db=25, acceptable_psnr_db=30)


# --- video -----------------------------------------------------------------------------------------------------

async def test_video_per_frame_metrics_and_temporal_consistency(settings, ws):
    frames = video("a river", 1, 192, 176, 7)
    base = record_run(ws, [Shot("a river", 1, frames)])
    same = record_run(ws, [Shot("a river", 1, frames)])
    noisy = record_run(ws, [Shot("a river", 1, video("a river", 1, 192, 176, 7, noise=6.0))])
    frozen = record_run(ws, [Shot("a river", 1, [frames[0]] * 7)])
    ident = (await compare(settings, base, same)).structured_content
    flick = (await compare(settings, base, noisy)).structured_content["worst"]
    still = (await compare(settings, base, frozen)).structured_content["worst"]
    assert ident["verdict"] == "identical" and ident["worst"]["temporal_diff"] == 0
    assert flick["kind"] == "video" and flick["frames"] == 7 and len(flick["frame_psnr_db"]) == 7
    assert flick["psnr_db"] == min(flick["frame_psnr_db"]) <= flick["psnr_db_mean"]
    assert flick["ssim"] == min(flick["frame_ssim"]) == flick["frame_ssim"][flick["worst_frame"]]
    assert flick["motion_ratio"] > 1.1 and flick["temporal_diff"] > 1  # noise adds frame-to-frame change: flicker
    assert still["motion_ratio"] == 0 and still["frame_psnr_db"][0] is None  # frozen: no motion, frame 0 identical
    # the reported per-frame figures are the decoded frames' (PyAV), checked on the worst frame
    import av
    with av.open(flick["baseline_path"]) as ca, av.open(flick["candidate_path"]) as cb:
        fa = [f.to_ndarray(format="rgb24") for f in ca.decode(video=0)]
        fb = [f.to_ndarray(format="rgb24") for f in cb.decode(video=0)]
    k = flick["worst_frame"]
    assert abs(flick["frame_psnr_db"][k] - ref_psnr(fa[k], fb[k])) < 1e-3
    assert abs(flick["ssim"] - ref_ssim_cs(y(fa[k]), y(fb[k]))[0]) < 1e-3
    strip = decoded(flick["picture"])
    assert strip.shape[0] == 3 * 176 + 2 * 4  # baseline / candidate / difference rows


# --- refusals --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, needle", [
    ({"guidance_scale": 7.5}, "guidance_scale differs (4.0 vs 7.5)"),
    ({"negative_prompt": "blurry"}, "negative_prompt differs"),
    ({"num_inference_steps": 8}, "steps differ (20 vs 8)"),
])
async def test_request_parameters_that_change_the_picture_are_refused(settings, ws, change, needle):
    base = record_run(ws, shots(1, 2, 64, 64))
    other = record_run(ws, [Shot(s.prompt, s.seed, s.pixels, change) for s in shots(1, 2, 64, 64)])
    refused = await compare(settings, base, other)
    assert refused.is_error and needle in refused.content[0].text and "Fix:" in refused.content[0].text
    name = next(iter(change))
    allowed = await compare(settings, base, other, across_steps=name == "num_inference_steps",
                            allow_differences=[name] if name != "num_inference_steps" else None)
    assert allowed.is_error is False and allowed.structured_content["verdict"] == "identical"


async def test_mismatched_runs_are_refused_with_every_reason(settings, ws):
    base = record_run(ws, shots(2, 2, 64, 64))
    fewer = record_run(ws, shots(1, 2, 64, 64), steps=10)
    result = await compare(settings, base, fewer)
    text = result.content[0].text
    assert result.is_error and "only in baseline 2" in text and "only in candidate 0" in text
    clip = record_run(ws, [Shot("prompt 0", 0, video("prompt 0", 0, 64, 64, 3))])
    still = record_run(ws, [Shot("prompt 0", 0, picture("prompt 0", 0, 64, 64))])
    mixed = await compare(settings, clip, still)
    assert mixed.is_error and "one run made images and the other videos" in mixed.content[0].text
    longer = record_run(ws, [Shot("prompt 0", 0, video("prompt 0", 0, 64, 64, 5), {"num_frames": 3})])
    frames = await compare(settings, clip, longer)
    assert frames.is_error and "frame counts differ (3 vs 5" in frames.content[0].text


async def test_outputs_of_a_different_size_than_recorded_are_refused(settings, ws):
    base = record_run(ws, shots(1, 1, 64, 64))
    cand = record_run(ws, shots(1, 1, 64, 64))
    row = ws.store.query_one("SELECT o.path, r.run_dir FROM outputs o JOIN runs r ON r.id = o.run_id "
                             "WHERE o.run_id = ?", (cand,))
    Image.fromarray(picture("prompt 0", 0, 96, 64)).save(Path(row["run_dir"]) / row["path"])  # server ignored size
    result = await compare(settings, base, cand)
    assert result.is_error and "pictures differ in shape: 64x64 vs 96x64" in result.content[0].text


async def test_a_run_without_saved_outputs_is_refused(settings, ws):
    base = record_run(ws, shots(1, 1, 64, 64))
    empty = record_run(ws, [], warmup=0)
    result = await compare(settings, base, empty)
    assert result.is_error and "has no saved measured outputs" in result.content[0].text


# --- pictures, the saved comparison, the trade-off -------------------------------------------------------------

async def test_pictures_are_linked_shown_as_image_content_and_saved(settings, ws):
    base = record_run(ws, shots(3, 2, 96, 64))
    cand = record_run(ws, shots(3, 2, 96, 64, noise=10.0))
    result = await compare(settings, base, cand, amplify=4)
    s = result.structured_content
    assert [c.type for c in result.content] == ["text"]  # the pictures are linked, not beside the data
    assert [(x["picture"], x["id"]) for x in s["pictures"][:2]] == [("contact_sheet", s["id"]), ("worst_pair", s["id"])]
    async with Client(build_server(settings)) as client:
        shown = [await client.call_tool("show_picture", {"picture": x["picture"], "id": x["id"]})
                 for x in s["pictures"][:2]]
    assert all(r.structured_content is None and [c.type for c in r.content] == ["image"] for r in shown)
    sheet = Image.open(io.BytesIO(base64.b64decode(shown[0].content[0].data)))
    worst = Image.open(io.BytesIO(base64.b64decode(shown[1].content[0].data)))
    assert sheet.format == worst.format == "PNG" and shown[0].content[0].mime_type == "image/png"
    assert sheet.size == Image.open(s["contact_sheet"]).size and sheet.width == 2 * (3 * 96 + 8) + 4
    assert worst.size == (3 * 96 + 8, 64 + 18)  # full size (below the viewing width) under a caption band
    folder = Path(s["folder"])
    assert folder.parent == ws.runs_dir and folder.name == s["id"]
    assert sorted(p.name for p in folder.glob("pair-*.png")) == [f"pair-{i:03d}.png" for i in range(6)]
    for p in s["pair_results"]:
        side = decoded(p["picture"])
        a, b = decoded(p["baseline_path"]), decoded(p["candidate_path"])
        assert side.shape == (64, 3 * 96 + 8, 3)
        assert np.array_equal(side[:, :96], a) and np.array_equal(side[:, 100:196], b)
        diff = np.abs(a.astype(int) - b.astype(int)).mean(axis=2)
        heat = side[:, 200:].astype(int)
        assert (heat[diff == 0] == 0).all() and heat[diff * 4 >= 255 / 3][:, 0].min() >= 254  # red or hotter
    saved = json.loads((folder / "comparison.json").read_text())
    assert saved["id"] == s["id"] and len(saved["pair_results"]) == 6
    row = ws.store.query_one("SELECT * FROM comparisons WHERE id = ?", (s["id"],))
    assert row["verdict"] == s["verdict"] and row["dir"] == s["folder"] and row["candidate_run"] == cand
    assert json.loads(row["summary"])["counts"] == s["counts"]
    twin = record_run(ws, shots(3, 2, 96, 64))  # a run against itself is refused: the same pictures, recorded twice
    same = await compare(settings, base, twin)
    assert same.structured_content["worst_picture"] is None  # nothing differs: no worst-pair preview is drawn


async def test_a_comparison_judged_without_pictures_says_the_same_and_points_to_the_one_that_draws_them(settings, ws):
    """What a tune's screening uses (compare_runs(draw=False)): the same verdict and figures, no PNG written, and a
    picture asked of it is refused with the call that draws it."""
    base = record_run(ws, shots(3, 2, 96, 64))
    cand = record_run(ws, shots(3, 2, 96, 64, noise=6.0))
    quick = compare_runs(ws, base, cand, draw=False)
    full = compare_runs(ws, base, cand)
    same = ("verdict", "counts", "psnr_db_min", "psnr_db_mean", "ssim_min", "ssim_mean", "ms_ssim_min")
    assert {k: getattr(quick, k) for k in same} == {k: getattr(full, k) for k in same}
    assert [r.verdict for r in quick.pair_results] == [r.verdict for r in full.pair_results]
    assert quick.contact_sheet is None and quick.worst_picture is None and quick.pictures == []
    assert list(Path(quick.folder).glob("*.png")) == [] and (Path(quick.folder) / "comparison.json").is_file()
    assert full.contact_sheet and Path(full.contact_sheet).is_file()
    async with Client(build_server(settings)) as client:
        for picture in ("contact_sheet", "worst_pair"):
            refused = await client.call_tool("show_picture", {"picture": picture, "id": quick.id})
            text = refused.content[0].text
            assert refused.is_error and "judged without pictures" in text and f"baseline_run={base!r}" in text


async def test_the_trade_off_joins_both_benchmarks(settings, ws):
    base = record_run(ws, shots(1, 2, 64, 64), summary=summary(2.0, 0.5, [30000.0, 1000.0], inference_p50_s=1.8),
                      config={"enforce_eager": True})
    cand = record_run(ws, shots(1, 2, 64, 64, noise=2.0),
                      summary=summary(0.8, 1.25, [24000.0, 1500.0], inference_p50_s=0.6),
                      config={"quantization": "fp8"})
    s = (await compare(settings, base, cand)).structured_content
    t = s["trade_off"]
    assert t["speedup_p50"] == pytest.approx(2.5) and t["speedup_inference_p50"] == pytest.approx(3.0)
    assert t["throughput_ratio"] == pytest.approx(2.5) and t["memory_change_mib"] == pytest.approx(-6000.0)
    assert t["total_memory_change_mib"] == pytest.approx(-5500.0) and t["verdict"] == s["verdict"]
    assert t["candidate"]["config"] == {"quantization": "fp8"} and t["baseline"]["throughput_unit"] == "images/s"
    assert "2.50x faster at p50" in s["summary"] and "-6000 MiB" in s["summary"]
    bare = record_run(ws, shots(1, 2, 64, 64), summary={"status": "failed"})  # a summary without figures
    lean = (await compare(settings, bare, cand)).structured_content["trade_off"]
    assert lean["speedup_p50"] is None and lean["memory_change_mib"] is None
    assert lean["candidate"]["peak_memory_mib"] == 24000.0


def test_worker_processes_give_the_same_results_as_one_process(ws):
    base = record_run(ws, shots(2, 2, 128, 96))
    cand = record_run(ws, shots(2, 2, 128, 96, noise=4.0))
    one = compare_runs(ws, base, cand, workers=1)
    two = compare_runs(ws, base, cand, workers=2)
    strip = {"picture", "index"}
    assert [p.model_dump(exclude=strip) for p in one.pair_results] == \
           [p.model_dump(exclude=strip) for p in two.pair_results]
    assert all(Path(p.picture).exists() for p in two.pair_results)
