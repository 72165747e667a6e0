"""Three splits for every layout: disjoint, deterministic, and a user split file that is checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medsam2_hpc.data import btcv, synthetic
from medsam2_hpc.data.refuge import RefugeDataset
from medsam2_hpc.data.splits import carve_val, read_split_file
from medsam2_hpc.errors import InputError


def _btcv_splits(root: Path, split_file: Path | None = None) -> dict[str, list[str]]:
    return {s: btcv.BTCVVolumes(root, s, split_file=split_file).cases for s in ("train", "val", "test")}


def _refuge_splits(root: Path, split_file: Path | None = None) -> dict[str, list[str]]:
    return {s: RefugeDataset(root, s, 32, 32, split_file=split_file).names for s in ("train", "val", "test")}


def _disjoint(splits: dict[str, list[str]]) -> bool:
    ids = [c for cases in splits.values() for c in cases]
    return len(ids) == len(set(ids)) and all(splits.values())


def test_carve_rule_is_every_sixth_sorted_case():
    real = [f"img{n:04d}" for n in (*range(1, 11), *range(21, 35))]  # dataset_0.json's 24 training scans
    carved = carve_val(list(reversed(real)), "btcv")
    assert carved["val"] == ["img0006", "img0022", "img0028", "img0034"]
    assert len(carved["train"]) == 20 and not set(carved["train"]) & set(carved["val"])
    assert carve_val(["b", "a", "c"], "x") == {"train": ["a", "b"], "val": ["c"]}
    with pytest.raises(InputError, match="x: 1 training case"):
        carve_val(["a"], "x")


def test_btcv_layouts_give_three_disjoint_splits(btcv_slices: Path, btcv_nifti: Path, tmp_path: Path):
    expected = {"train": ["img0001", "img0002", "img0003"], "val": ["img0004"],
                "test": ["img0005", "img0006"]}
    assert _btcv_splits(btcv_slices) == expected  # val carved from Training/, test = Test/
    assert _btcv_splits(btcv_nifti) == expected  # val carved from "training", test = "validation"
    (tmp_path / "gen").mkdir()
    for sub in ("imagesTr", "labelsTr"):  # no dataset_0.json: test = the last 20 %
        (tmp_path / "gen" / sub).symlink_to(btcv_nifti / sub, target_is_directory=True)
    generated = _btcv_splits(tmp_path / "gen")
    assert generated == {"train": ["img0001", "img0002", "img0003", "img0004"], "val": ["img0005"],
                         "test": ["img0006"]}
    assert all(_disjoint(s) for s in (expected, generated))


def test_refuge_layouts_give_three_disjoint_splits(refuge_multirater: Path, refuge_challenge: Path,
                                                  tmp_path: Path):
    multirater = _refuge_splits(refuge_multirater)
    assert multirater == {"train": ["g0001", "g0003", "n0002"], "val": ["n0004"], "test": ["T0001", "T0002"]}
    challenge = _refuge_splits(refuge_challenge)  # no test GT: test = Validation400, val carved
    assert challenge == {"train": ["g0001", "g0003", "n0002"], "val": ["n0004"], "test": ["V0001", "V0002"]}
    # with the challenge's test images and ground truth, val is the challenge's validation set
    full = synthetic.make_refuge(tmp_path / "full", "challenge", n_train=3, n_test=2, size=32, seed=1)
    for sub, gt in (("REFUGE-Test400", "REFUGE-Test-GT"),):
        (full / sub).mkdir()
        (full / gt / "Disc_Cup_Masks").mkdir(parents=True)
        for image in (full / "REFUGE-Validation400").glob("*.jpg"):
            (full / sub / f"T{image.name[1:]}").write_bytes(image.read_bytes())
            bmp = full / "REFUGE-Validation400-GT" / "Disc_Cup_Masks" / f"{image.stem}.bmp"
            (full / gt / "Disc_Cup_Masks" / f"T{bmp.name[1:]}").write_bytes(bmp.read_bytes())
    assert _refuge_splits(full) == {"train": ["g0001", "g0003", "n0002"], "val": ["V0001", "V0002"],
                                    "test": ["T0001", "T0002"]}
    assert all(_disjoint(s) for s in (multirater, challenge))


def test_a_split_file_replaces_the_mapping(btcv_nifti: Path, refuge_multirater: Path, tmp_path: Path):
    mine = {"train": ["img0005", "img0002"], "val": ["img0001"], "test": ["img0006", "img0003"]}
    (tmp_path / "s.json").write_text(json.dumps(mine))
    assert _btcv_splits(btcv_nifti, tmp_path / "s.json") == mine  # ids from training and validation
    refuge = {"train": ["T0001", "g0001"], "val": ["n0002"], "test": ["g0003"]}
    (tmp_path / "r.json").write_text(json.dumps(refuge))
    assert _refuge_splits(refuge_multirater, tmp_path / "r.json") == refuge


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "exactly the keys train, val, test"),
    ('{"train": ["a"], "val": ["b"]}', "exactly the keys train, val, test"),
    ('{"train": ["a"], "val": [], "test": ["c"]}', "'val' must be a non-empty list"),
    ('{"train": ["a"], "val": ["a"], "test": ["c"]}', "case 'a' is in both 'train' and 'val'"),
    ('{"train": ["a\\n"], "val": ["b"], "test": ["c"]}', "is not a plain case id"),
    ("{not json", "not a readable JSON split file"),
])
def test_bad_split_files_are_one_line_naming_the_file(tmp_path: Path, content: str, message: str):
    path = tmp_path / "split.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as err:
        read_split_file(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value).replace("a\\n", "")


def test_split_file_ids_must_exist(btcv_slices: Path, tmp_path: Path):
    (tmp_path / "s.json").write_text(json.dumps({"train": ["img0001"], "val": ["img0002"],
                                                 "test": ["img0099"]}))
    with pytest.raises(InputError, match="case 'img0099' \\(test\\) is not in the dataset"):
        btcv.BTCVVolumes(btcv_slices, "test", split_file=tmp_path / "s.json")
