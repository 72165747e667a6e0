"""notebooks/quickstart.ipynb: committed clean and up to date, and it runs end to end (nbclient).

The slow test executes every cell in a fresh python3 kernel of this interpreter, with the
notebook's outputs sent to a temporary directory, then checks what the notebook produced rather
than what it printed: a valid metrics.json, NIfTI predictions on the source affine, and a
comparison table with the SAM2 3D and ResNet rows.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import nbformat
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medsam2_hpc.contract import validate_metrics

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


def _generator():
    path = REPO / "notebooks" / "make_quickstart.py"
    spec = importlib.util.spec_from_file_location("make_quickstart", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebook_is_generated_and_has_no_outputs() -> None:
    """The committed file is exactly what make_quickstart.py writes: no outputs, fixed cell ids."""
    text = NOTEBOOK.read_text(encoding="utf-8")
    assert text == _generator().render(), "notebook out of date: run notebooks/make_quickstart.py"
    nb = nbformat.reads(text, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert len({c.id for c in nb.cells}) == len(nb.cells)


def _kernel_name() -> str:
    """The python3 kernel, which must run this interpreter (where medsam2_hpc is installed).

    jupyter_client starts a spec whose argv[0] is "python" with sys.executable; ipykernel's
    own spec (installed into the venv with it) is that one.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.fail("no python3 kernel spec: install the dev extra (ipykernel) into this venv")
    exe = spec.argv[0]
    assert exe in ("python", "python3") or Path(exe).resolve() == Path(sys.executable).resolve(), (
        f"kernel python3 runs {exe}, not {sys.executable}")
    return "python3"


@pytest.mark.slow
def test_quickstart_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nbclient import NotebookClient

    out = tmp_path / "out"
    monkeypatch.setenv("MEDSAM2_NOTEBOOK_OUT", str(out))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, kernel_name=_kernel_name(), timeout=900,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors

    study = out / "runs" / "quickstart"
    (sam2_metrics,) = study.glob("sam2-3d_*/metrics.json")
    metrics = json.loads(sam2_metrics.read_text())
    assert validate_metrics(metrics) == []
    assert metrics["model"] == "sam2-3d" and metrics["epochs_completed"] == 1
    assert "dice_mean_per_slice" in metrics

    data = out / "data" / "btcv"
    predictions = sorted((out / "inference").glob("*.nii.gz"))
    assert predictions
    for path in predictions:
        case = path.name.removesuffix(".nii.gz")
        source = nib.load(data / "imagesTr" / f"{case}.nii.gz")
        written = nib.load(path)
        assert written.shape == source.shape
        np.testing.assert_allclose(written.affine, source.affine)
    assert list((out / "inference" / "vis").glob("*.png"))

    headline = pd.read_csv(study / "comparison" / "tables" / "headline.csv")
    assert {"sam2-3d", "resnet"} <= set(headline["model"])
    assert (study / "comparison" / "MODEL_COMPARISON.md").is_file()
    assert list((study / "comparison" / "plots").glob("*.png"))
    # the figures and the dry run were shown, not only computed
    shown = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(shown) >= 3
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "#SBATCH --array=" in printed
