"""The full-scale path of the SDAT and S3VAADA reproductions, end to end on a tiny image folder.

The test writes ``root/domain/class/*.png`` (2 domains x 3 classes x 4 images of 40 x 40 pixels)
and runs the ``paper`` presets on it with a tiny timm backbone (``test_resnet``, random weights),
one or two iterations, through the same harness the command line uses.
"""

import numpy as np
import pytest
import torch

from benchmarks._harness import run_experiment
from benchmarks.s3vaada import EXPERIMENT as S3VAADA
from benchmarks.sdat import EXPERIMENT as SDAT
from benchmarks.sdat.data import make_folder_task

pytest.importorskip("timm")
PIL = pytest.importorskip("PIL.Image")

CLASSES = ("cat", "dog", "owl")
TINY = {
    "data.resize": 36,
    "data.crop": 32,
    "data.test_fraction": 0.25,
    "model": {"backbone": "test_resnet", "bottleneck": 16, "checkpoint": None, "backbone_lr_mult": 0.1},
    "discriminator_hidden": 8,
    "batch_size": 4,
    "workers": 0,
}


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("office_tiny")
    rng = np.random.default_rng(0)
    for d, domain in enumerate(("art", "clipart")):
        for c, name in enumerate(CLASSES):
            folder = root / domain / name
            folder.mkdir(parents=True)
            for i in range(4):
                img = rng.integers(0, 60, size=(40, 40, 3), dtype=np.uint8)
                img[:, :, c] += 150 + 30 * d  # class colour, shifted per domain
                PIL.fromarray(img).save(folder / f"{i}.png")
    (root / "art" / "notes.txt").write_text("not an image")  # ignored: no class folder holds it
    return root


def test_folder_task_reads_domains_and_holds_out_target(image_root):
    task = make_folder_task(image_root, "art", "clipart", seed=0, test_fraction=0.25, resize=36, crop=32)
    assert task.num_classes == 3
    assert len(task.source) == 12 and len(task.target) == 9 and len(task.test) == 3
    x, y = task.test[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= y < 3
    # the pool in training and evaluation transforms is the same examples, in the same order
    assert [task.target[i][1] for i in range(9)] == [task.target_eval[i][1] for i in range(9)]
    with pytest.raises(FileNotFoundError, match="domain folder"):
        make_folder_task(image_root, "art", "sketch", seed=0)


def test_folder_task_refuses_mismatched_classes(image_root, tmp_path):
    import shutil

    shutil.copytree(image_root / "art", tmp_path / "a")
    shutil.copytree(image_root / "clipart", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "owl")
    with pytest.raises(ValueError, match="different classes"):
        make_folder_task(tmp_path, "a", "b", seed=0)


def test_sdat_paper_preset_end_to_end_on_image_folder(image_root, tmp_path):
    overrides = {
        **TINY,
        "data.root": str(image_root),
        "settings": {"a2c": {"source": "art", "target": "clipart"}},
        "grid": {"a2c": ["dann", "dann_sdat", "cdan_mcc_sdat"]},
        "rho": {"a2c": 0.02},
        "iterations": 2,
    }
    results = run_experiment(SDAT, preset="paper", out=tmp_path, device="cpu", seeds=[0, 1],
                             overrides=overrides, show_progress=False)
    assert len(results) == 6
    assert all(0.0 <= r["test_acc"] <= 100.0 for r in results.values())
    assert "a2c: DANN+SDAT vs DANN" in (tmp_path / "sdat" / "report.md").read_text()


def test_s3vaada_paper_preset_end_to_end_on_image_folder(image_root, tmp_path):
    overrides = {
        **TINY,
        "data.root": str(image_root),
        "data.source": "art",
        "data.target": "clipart",
        "grid": {"vaada": ["s3", "random"], "dann": ["s3_margin", "entropy"]},
        "budget_fraction": 0.25,  # of a 9-image pool: 2 labels per round
        "rounds": 2,
        "init_iterations": 1,
        "round_iterations": 1,
    }
    results = run_experiment(S3VAADA, preset="paper", out=tmp_path, device="cpu", seeds=[0, 1],
                             overrides=overrides, show_progress=False)
    assert len(results) == 8
    for r in results.values():
        assert r["budgets"] == [0, 2, 4] and sum(r["label_counts"]) == 4 and r["pool_size"] == 9
    assert (tmp_path / "s3vaada" / "figures" / "accuracy_vs_budget.png").exists()
