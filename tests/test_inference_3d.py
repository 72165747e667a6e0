"""inference_3d.py: whole-volume prediction files, prompt files, errors; the real MNI152 volume.

Hiera-T with random weights at 64 px (CPU). A "Meta" checkpoint here is a plain
``{"model": state_dict}`` file of that random model, which is the format Meta ships.
"""

from __future__ import annotations

import json
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medsam2_hpc.contract import validate_metrics
from medsam2_hpc.data.btcv import BTCVVolumes
from medsam2_hpc.inference.cli import main
from medsam2_hpc.models.sam2 import build_sam2_model
from medsam2_hpc.runner import run_task
from medsam2_hpc.task import Task

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
SIZE = 64


@pytest.fixture(scope="module")
def meta_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_sam2_model("sam2_hiera_t", None, image_size=SIZE, allow_random=True)
    path = tmp_path_factory.mktemp("ckpt") / "sam2_hiera_tiny.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


def _args(ckpt, data, out, *extra):
    return ["-checkpoint", str(ckpt), "-sam_config", "sam2_hiera_t", "-data_path", str(data),
            "-dataset", "btcv", "-image_size", str(SIZE), "-output_dir", str(out), "-split", "test", *extra]


def test_nifti_predictions_keep_grid_and_ids(btcv_nifti, meta_ckpt, tmp_path):
    out = tmp_path / "out"
    assert main(_args(meta_ckpt, btcv_nifti, out, "-prompt", "bbox", "-save_vis")) == 0
    volumes = BTCVVolumes(btcv_nifti, "test")
    for volume in volumes:
        source = nib.load(str(volume.source))
        written = nib.load(str(out / f"{volume.case}.nii.gz"))
        assert written.shape == source.shape
        np.testing.assert_allclose(written.affine, source.affine)
        pred = np.load(out / f"{volume.case}.npy")
        assert pred.shape == volume.image.shape and pred.dtype == np.uint8
        assert set(np.unique(pred)) <= set(np.unique(volume.label))
        # the NIfTI holds the same labels as the .npy, laid back onto the source grid
        assert np.bincount(np.asarray(written.dataobj, dtype=np.uint8).ravel(), minlength=14).tolist() == \
            np.bincount(pred.ravel(), minlength=14).tolist()
    metrics = json.loads((out / "metrics.json").read_text())
    assert validate_metrics(metrics) == []
    assert metrics["checkpoint_kind"] == "meta" and metrics["protocol"]["prompts"] == "ground truth"
    assert metrics["postprocess"] == "meta"  # zero-shot SAM2 as Meta's video predictor gives it
    assert set(metrics["per_case"]) == set(volumes.cases)
    rows = (out / "dice.csv").read_text().splitlines()
    assert rows[0] == "case,organ,dice,dice_per_slice,hd95_mm" and len(rows) > 1
    assert list((out / "vis").glob("*.png"))
    index = json.loads((out / "predictions.json").read_text())["cases"]
    assert list(index) == volumes.cases and all(e["scored"] for e in index.values())
    assert index["img0005"]["prompts"] == {"from": "ground truth", "prompt": "bbox", "prompt_freq": 2,
                                           "seed": 0, "organs": ["spleen", "right kidney", "left kidney",
                                                                 "liver"]}


def test_prompt_file_drives_prediction(btcv_slices, meta_ckpt, tmp_path):
    case = BTCVVolumes(btcv_slices, "test").cases[0]
    prompts = [{"case": case, "slice": 10, "organ": "liver", "box": [10, 10, 40, 50]},
               {"case": case, "slice": 12, "organ": 2, "points": [[60, 40]], "labels": [1]}]
    (tmp_path / "p.json").write_text(json.dumps(prompts))
    out = tmp_path / "out"
    assert main(_args(meta_ckpt, btcv_slices, out, "-prompt_file", str(tmp_path / "p.json"))) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"]["prompts"] == "file" and validate_metrics(metrics) == []
    assert np.load(out / f"{case}.npy").shape == BTCVVolumes(btcv_slices, "test").get(case).image.shape


@pytest.mark.parametrize("entry, message", [
    ({"case": "img9999", "slice": 1, "organ": 1, "box": [1, 1, 5, 5]}, "case: 'img9999'"),
    ({"case": None, "slice": 99, "organ": 1, "box": [1, 1, 5, 5]}, "slice: 99"),
    ({"case": None, "slice": 1, "organ": "livr", "box": [1, 1, 5, 5]}, "did you mean 'liver'"),
    ({"case": None, "slice": 1, "organ": 1}, "exactly one of 'box' or 'points'"),
])
def test_bad_prompt_file_is_one_line_exit_2(btcv_slices, meta_ckpt, tmp_path, capsys, entry, message):
    entry = {**entry, "case": entry["case"] or BTCVVolumes(btcv_slices, "test").cases[0]}
    (tmp_path / "p.json").write_text(json.dumps([entry]))
    out = tmp_path / "out"
    assert main(_args(meta_ckpt, btcv_slices, out, "-prompt_file", str(tmp_path / "p.json"))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "entry 0" in err[0]
    assert not out.exists()


def test_bad_postprocess_is_one_line_exit_2(btcv_slices, meta_ckpt, tmp_path, capsys):
    assert main(_args(meta_ckpt, btcv_slices, tmp_path / "out", "-postprocess", "mta")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "-postprocess: 'mta'" in err[0] and "did you mean 'meta'" in err[0]
    assert not (tmp_path / "out").exists()


def test_checkpoint_for_another_config_is_exit_2(btcv_slices, meta_ckpt, tmp_path, capsys):
    args = _args(meta_ckpt, btcv_slices, tmp_path / "out")
    args[args.index("-sam_config") + 1] = "sam2_hiera_s"
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit -sam_config sam2_hiera_s" in err[0]
    assert not (tmp_path / "out").exists()


def test_unlabelled_split_with_gt_prompts_is_exit_2(btcv_slices, meta_ckpt, tmp_path, capsys):
    import shutil

    data = tmp_path / "btcv"
    shutil.copytree(btcv_slices, data)
    shutil.rmtree(data / "Test" / "mask")
    assert main(_args(meta_ckpt, data, tmp_path / "out")) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def _mni_btcv(root):
    """nilearn's MNI152 T1 (2 mm) with its brain mask as organ 1, in the raw BTCV layout."""
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    t1, mask = load_mni152_template(resolution=2), load_mni152_brain_mask(resolution=2)
    data = np.asarray(t1.dataobj, dtype=np.float32)
    hu = data / max(float(data.max()), 1.0) * 425.0 - 175.0  # into the CT window the loader applies
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    entries = []
    for case in ("0001", "0002", "0003"):  # train, val (carved from training) and test: one volume each
        nib.save(nib.Nifti1Image(hu, t1.affine), root / "imagesTr" / f"img{case}.nii.gz")
        nib.save(nib.Nifti1Image(np.asarray(mask.dataobj).astype(np.uint8), mask.affine),
                 root / "labelsTr" / f"label{case}.nii.gz")
        entries.append({"image": f"imagesTr/img{case}.nii.gz", "label": f"labelsTr/label{case}.nii.gz"})
    (root / "dataset_0.json").write_text(json.dumps({"training": entries[:2], "validation": entries[2:]}))
    return root


@pytest.mark.slow
def test_mni152_trains_one_step_and_predicts(tmp_path):
    data = _mni_btcv(tmp_path / "mni")
    task = Task(model="sam2-3d", variant="hiera_t", dataset="btcv", data_path=str(data),
                output_root=str(tmp_path / "runs"), prompt="bbox",
                hparams={"epochs": 1, "image_size": SIZE, "sam_ckpt": "none", "num_workers": 0,
                         "video_length": 2, "clips_per_epoch": 1, "prompt_freq": 8, "hd95": False})
    metrics = run_task(task)
    assert validate_metrics(metrics) == [] and list(metrics["per_case"]) == ["img0003"]
    out = tmp_path / "infer"
    args = _args(task.run_dir.best_ckpt, data, out, "-prompt_freq", "8", "-no_hd95")
    args.remove("-sam_config")
    args.remove("sam2_hiera_t")  # our checkpoint knows its config
    assert main(args) == 0
    written = nib.load(str(out / "img0003.nii.gz"))
    source = nib.load(str(data / "imagesTr" / "img0003.nii.gz"))
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1}
    assert json.loads((out / "metrics.json").read_text())["checkpoint_kind"] == "ours"


def test_merge_slice_keeps_the_most_likely_organ_above_half():
    from medsam2_hpc.inference.predict import merge_slice

    labels = torch.tensor([[0, 0], [4, 4]], dtype=torch.uint8)
    best = torch.tensor([[0.5, 0.5], [0.9, 0.6]], dtype=torch.float16)
    probs = torch.tensor([[[0.7, 0.2], [0.95, 0.1]],    # organ 1
                          [[0.8, 0.4], [0.10, 0.7]]])   # organ 2
    merge_slice(labels, best, torch.tensor([1, 2], dtype=torch.uint8), probs)
    # (0,0): organ 2 beats organ 1; (0,1): nobody above 0.5; (1,0): 0.95 beats the earlier 0.9;
    # (1,1): 0.7 beats the earlier 0.6
    assert labels.tolist() == [[2, 0], [1, 2]]
    torch.testing.assert_close(best, torch.tensor([[0.8, 0.5], [0.95, 0.7]], dtype=torch.float16))


def _lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def test_prompt_file_predicts_unlabelled_nifti_test_scans(meta_ckpt, tmp_path, capsys):
    """dataset_0.json's "test" list (imagesTs/, no labels) is the "unlabelled" split; a prompt file
    predicts it."""
    from medsam2_hpc.data import synthetic

    data = synthetic.make_btcv(tmp_path / "btcv", "nifti", n_train=1, n_test=1, depth=8, size=SIZE,
                               unlabelled=1)
    prompts = [{"case": "img0003", "slice": 4, "organ": "liver", "box": [10, 15, 30, 40]},
               {"case": "img0003", "slice": 3, "organ": 1, "points": [[45, 35]]}]
    (tmp_path / "p.json").write_text(json.dumps(prompts))
    out = tmp_path / "out"
    assert main(_args(meta_ckpt, data, out, "-prompt_file", str(tmp_path / "p.json"), "-save_vis",
                      "-split", "unlabelled")) == 0
    assert "unscored (no labels): img0003" in capsys.readouterr().err
    source = nib.load(str(data / "imagesTs" / "img0003.nii.gz"))
    written = nib.load(str(out / "img0003.nii.gz"))
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    pred = np.load(out / "img0003.npy")
    assert pred.shape == (8, SIZE, SIZE) and set(np.unique(pred)) <= {0, 1, 6}
    assert not (out / "metrics.json").exists() and not (out / "dice.csv").exists()
    index = json.loads((out / "predictions.json").read_text())
    entry = index["cases"]["img0003"]
    assert entry["files"] == ["img0003.npy", "img0003.nii.gz"] and entry["scored"] is False
    assert entry["prompts"] == [{"slice": 3, "organ": "spleen", "points": [[45.0, 35.0]], "labels": [1]},
                                {"slice": 4, "organ": "liver", "box": [10.0, 15.0, 30.0, 40.0]}]
    # without truth a panel is image | prediction: two slices wide plus the 4 px gap
    for png in (out / "vis").glob("img0003_*.png"):
        assert Image.open(png).size == (2 * SIZE + 4, SIZE)

    # ground-truth prompts on the same split: one line naming the unlabelled scan, nothing written
    assert main(_args(meta_ckpt, data, tmp_path / "gt", "-split", "unlabelled")) == 2
    err = _lines(capsys)
    assert len(err) == 1 and "imagesTs/img0003.nii.gz: case img0003 has no label file" in err[0]
    assert not (tmp_path / "gt").exists()


def test_prompt_file_scores_labelled_and_skips_unlabelled_slices_cases(meta_ckpt, tmp_path, capsys):
    """Slices layout: Test/image/img0003 without Test/mask/img0003 beside a labelled img0002."""
    from medsam2_hpc.data import synthetic

    data = synthetic.make_btcv(tmp_path / "btcv", "slices", n_train=1, n_test=1, depth=8, size=SIZE,
                               unlabelled=1)
    assert not (data / "Test" / "mask" / "img0003").exists()
    prompts = [{"case": c, "slice": 4, "organ": "liver", "box": [10, 15, 30, 40]}
               for c in ("img0002", "img0003")]
    (tmp_path / "p.json").write_text(json.dumps(prompts))
    out = tmp_path / "out"
    assert main(_args(meta_ckpt, data, out, "-prompt_file", str(tmp_path / "p.json"), "-no_hd95")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert validate_metrics(metrics) == []
    assert list(metrics["per_case"]) == ["img0002"] and metrics["unscored_cases"] == ["img0003"]
    assert {row.split(",")[0] for row in (out / "dice.csv").read_text().splitlines()[1:]} == {"img0002"}
    index = json.loads((out / "predictions.json").read_text())["cases"]
    assert {c: e["scored"] for c, e in index.items()} == {"img0002": True, "img0003": False}
    assert index["img0003"]["files"] == ["img0003.npy"]  # no geometry, so no .nii.gz
    assert np.load(out / "img0003.npy").shape == (8, SIZE, SIZE)
    assert "unscored (no labels): img0003" in capsys.readouterr().err

    assert main(_args(meta_ckpt, data, tmp_path / "gt")) == 2
    err = _lines(capsys)
    assert len(err) == 1 and "case img0003 has images but no masks" in err[0]
    assert not (tmp_path / "gt").exists()


def test_prompt_file_predicts_only_the_cases_it_names(btcv_slices, meta_ckpt, tmp_path):
    cases = BTCVVolumes(btcv_slices, "test").cases
    (tmp_path / "p.json").write_text(json.dumps([{"case": cases[1], "slice": 5, "organ": 6,
                                                  "box": [10, 10, 40, 50]}]))
    out = tmp_path / "out"
    assert main(_args(meta_ckpt, btcv_slices, out, "-prompt_file", str(tmp_path / "p.json"), "-no_hd95")) == 0
    assert sorted(p.name for p in out.glob("*.npy")) == [f"{cases[1]}.npy"]
    assert list(json.loads((out / "predictions.json").read_text())["cases"]) == [cases[1]]
    gt = json.loads((out / "metrics.json").read_text())
    assert gt["cases"] == [cases[1]] and gt["unscored_cases"] == []


def test_label_volume_with_key_cache_equals_metas_memory_read():
    """The eval shortcuts (layer-0 sharing, per-frame key cache) leave a volume's labels as Meta's path."""
    from sam2.modeling.memory_attention import MemoryAttention

    from medsam2_hpc.inference.predict import SlicePrompt, predict_volume
    from medsam2_hpc.models.sam2_video import VideoPropagator

    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_sam2_model("sam2_hiera_t", None, image_size=SIZE, allow_random=True).eval()
    model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.data.fill_(5.0)  # organs present
    prop = VideoPropagator(model)
    image = np.random.default_rng(0).random((9, 48, 48), dtype=np.float32)
    boxes = {1: (4, 4, 20, 20), 2: (24, 6, 44, 30), 3: (8, 28, 30, 46)}
    prompts = {o: {3: SlicePrompt("box", box=box), 7: SlicePrompt("box", box=box)}
               for o, box in boxes.items()}

    def labels() -> np.ndarray:
        return predict_volume(prop, image, prompts, image_size=SIZE, device=torch.device("cpu"), amp="none")

    cached = labels()
    model.memory_attention.__class__ = MemoryAttention
    meta = labels()
    assert set(np.unique(meta)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(cached, meta)
