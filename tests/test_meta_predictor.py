"""Zero-shot SAM2 as Meta ships it: our propagation against Meta's own SAM2VideoPredictor.

Same random-weight Hiera-T checkpoint (saved to tmp in Meta's layout), same volume (JPEG slices,
which Meta's ``init_state`` reads; ours gets the same decoded pixels), same prompts (boxes, an
empty mask where an organ is absent, a mask prompt), 256 px on the CPU. ``-postprocess none`` is
compared with ``build_sam2_video_predictor(apply_postprocessing=False)``, ``meta`` with its
default. Meta's hole filling needs the CUDA extension ``sam2._C``, not built here: Meta's code
then warns and leaves the masks unfilled, and ours calls the same function.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from medsam2_hpc.inference.predict import SlicePrompt, object_prompts
from medsam2_hpc.models.sam2 import build_sam2_model
from medsam2_hpc.models.sam2_video import VideoPropagator

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
SIZE, FRAMES = 256, 4
_MASK = np.zeros((SIZE, SIZE), bool)
_MASK[170:230, 30:110] = True
# organ -> slice -> prompt: boxes (x0, y0, x1, y1), None = absent (empty mask), or a mask
PROMPTS = {1: {0: (60, 80, 140, 160), 2: (64, 78, 136, 158)},
           2: {0: (150, 30, 200, 90), 2: None},
           3: {0: _MASK, 2: _MASK}}


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """(checkpoint, JPEG slice folder, the slices as decoded) of a small synthetic volume."""
    root = tmp_path_factory.mktemp("meta_predictor")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_sam2_model("sam2_hiera_t", None, image_size=SIZE, allow_random=True)
    # random heads call every object absent (all masks a constant): make them present
    model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.data.fill_(5.0)
    torch.save({"model": model.state_dict()}, root / "sam2_hiera_tiny.pt")
    frames = root / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for t in range(FRAMES):
        disc = (xx - 100 - 3 * t) ** 2 + (yy - 120) ** 2 < 40 ** 2
        image = 0.3 + 0.4 * disc + 0.1 * rng.random((SIZE, SIZE))
        Image.fromarray((image * 255).astype(np.uint8), "L").save(frames / f"{t:05d}.jpg", quality=95)
    decoded = np.stack([np.asarray(Image.open(frames / f"{t:05d}.jpg").convert("RGB"))[..., 0]
                        for t in range(FRAMES)]) / 255.0
    return root / "sam2_hiera_tiny.pt", frames, decoded


def _meta(ckpt: Path, frames: Path, mode: str) -> dict[int, torch.Tensor]:
    """Mask logits (K, S, S) per slice from Meta's SAM2VideoPredictor, built by Meta's builder."""
    from sam2.build_sam import build_sam2_video_predictor

    feat = SIZE // 16
    predictor = build_sam2_video_predictor(
        "configs/sam2/sam2_hiera_t.yaml", str(ckpt), device="cpu", apply_postprocessing=mode == "meta",
        hydra_overrides_extra=[f"++model.image_size={SIZE}",
                               f"++model.memory_attention.layer.self_attention.feat_sizes=[{feat},{feat}]",
                               f"++model.memory_attention.layer.cross_attention.feat_sizes=[{feat},{feat}]"])
    state = predictor.init_state(str(frames))
    for organ, per_slice in PROMPTS.items():
        for t, prompt in per_slice.items():
            if prompt is None:
                predictor.add_new_mask(state, t, organ, np.zeros((SIZE, SIZE), bool))
            elif isinstance(prompt, np.ndarray):
                predictor.add_new_mask(state, t, organ, prompt)
            else:
                predictor.add_new_points_or_box(state, t, organ, box=np.array(prompt, np.float32))
    return {t: masks[:, 0] for t, _, masks in predictor.propagate_in_video(state)}


def _ours(ckpt: Path, decoded: np.ndarray, mode: str) -> dict[int, torch.Tensor]:
    """The same through VideoPropagator, logits resized to the slice as ``predict_volume`` does."""
    model = build_sam2_model("sam2_hiera_t", ckpt, image_size=SIZE).eval()
    propagator = VideoPropagator(model, max_cond_frames=-1, postprocess=mode)

    def spec(prompt: object) -> SlicePrompt:
        if prompt is None:
            return SlicePrompt("empty")
        if isinstance(prompt, np.ndarray):
            return SlicePrompt("mask", mask=prompt)
        return SlicePrompt("box", box=prompt)

    prompts = {t: object_prompts([spec(PROMPTS[o][t]) for o in PROMPTS], (SIZE, SIZE), SIZE, "cpu")
               for t in PROMPTS[1]}
    images = torch.from_numpy(decoded).float()[:, None].expand(-1, 3, -1, -1)
    with torch.inference_mode():
        feats = propagator.encode(images)
        return {t: F.interpolate(out.low_res.float(), size=(SIZE, SIZE), mode="bilinear",
                                 align_corners=False)[:, 0]
                for t, out in propagator.propagate(feats, prompts, FRAMES, len(PROMPTS))}


def test_logits_match_metas_video_predictor_in_both_modes(case) -> None:
    ckpt, frames, decoded = case
    theirs = {mode: _meta(ckpt, frames, mode) for mode in ("none", "meta")}
    for mode in ("none", "meta"):
        ours = _ours(ckpt, decoded, mode)
        assert sorted(ours) == sorted(theirs[mode]) == list(range(FRAMES))
        for t in range(FRAMES):
            torch.testing.assert_close(ours[t], theirs[mode][t], atol=1e-4, rtol=0, msg=f"{mode}, slice {t}")
    # the two modes differ (so matching both says something), on prompted and tracked slices
    assert all(float((theirs["meta"][t] - theirs["none"][t]).abs().max()) > 1e-2 for t in range(FRAMES))
