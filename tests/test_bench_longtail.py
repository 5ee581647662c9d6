"""The long-tail reproduction: data profiles, augmentation, schedules, the CIFAR-10-LT path, the smoke preset."""

import json
import pickle

import numpy as np
import pytest
import torch

from benchmarks._harness import run_experiment
from benchmarks.longtail import EXPERIMENT
from benchmarks.longtail.data import (
    cifar_lt,
    digits_lt,
    long_tail_counts,
    long_tail_subset,
    read_cifar,
    read_list_file,
)
from benchmarks.longtail.grid import PRESETS, parse_key, units
from benchmarks.longtail.models import build_model
from benchmarks.longtail.train import (
    Method,
    build_loss,
    build_optimizer,
    lr_factor,
    set_loss_weight,
    shift_and_flip,
    train_one,
)

# ----------------------------------------------------------------------------- data


@pytest.mark.parametrize(
    ("n_max", "classes", "imbalance", "total"),
    [
        (5000, 10, 100, 12406),  # CIFAR-10-LT IF 100: the total quoted in PAPERS.md section 2
        (500, 100, 100, 10847),  # CIFAR-100-LT IF 100: same source
        (5000, 10, 10, 20431),  # CIFAR-10-LT IF 10: sum of floor(5000 * 10^(-i/9)), worked out by hand
    ],
)
def test_long_tail_totals(n_max, classes, imbalance, total):
    counts = long_tail_counts(n_max, classes, imbalance)
    assert sum(counts) == total
    assert counts[0] == n_max and counts[-1] == n_max // imbalance
    assert all(a >= b for a, b in zip(counts, counts[1:]))


@pytest.mark.parametrize(("args", "match"), [((0, 10, 100), "n_max"), ((10, 1, 100), "num_classes"),
                                             ((10, 10, 0.5), "imbalance_factor")])
def test_long_tail_counts_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        long_tail_counts(*args)


def test_long_tail_subset_is_deterministic_and_exact():
    labels = torch.arange(40) % 4
    a = long_tail_subset(labels, [10, 5, 2, 1], seed=0)
    b = long_tail_subset(labels, [10, 5, 2, 1], seed=0)
    assert torch.equal(a, b)
    assert torch.bincount(labels[a], minlength=4).tolist() == [10, 5, 2, 1]
    assert not torch.equal(a, long_tail_subset(labels, [10, 5, 2, 1], seed=1))
    with pytest.raises(ValueError, match="class 3 has 10 items"):
        long_tail_subset(labels, [1, 1, 1, 11])


def test_digits_lt_profile_and_balanced_test():
    d = digits_lt(imbalance_factor=100, test_per_class=30)
    # 178 zeros in scikit-learn's digits, 30 held out -> 148; then floor(148 * 100^(-i/9)).
    assert d.cls_num_list == [148, 88, 53, 31, 19, 11, 6, 4, 2, 1]
    assert torch.bincount(d.train_y, minlength=10).tolist() == d.cls_num_list
    assert torch.bincount(d.test_y, minlength=10).tolist() == [30] * 10
    assert d.train_x.shape[1:] == (1, 8, 8)


def _write_cifar10(root, per_class_train=12, per_class_test=3, seed=0):
    """A miniature CIFAR-10 python archive (same keys, dtypes and layout as the real one)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_labels = np.repeat(np.arange(10), per_class_train)
    rng.shuffle(train_labels)
    batches = np.array_split(np.arange(train_labels.size), 5)
    for i, idx in enumerate(batches, 1):
        data = rng.integers(0, 256, size=(idx.size, 3072), dtype=np.uint8)
        with open(folder / f"data_batch_{i}", "wb") as fh:
            pickle.dump({b"data": data, b"labels": train_labels[idx].tolist()}, fh)
    test_labels = np.repeat(np.arange(10), per_class_test)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": rng.integers(0, 256, size=(test_labels.size, 3072), dtype=np.uint8),
                     b"labels": test_labels.tolist()}, fh)
    return folder


def test_read_cifar100_layout(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("train", 200), ("test", 100)):
        labels = np.arange(n) % 100
        with open(tmp_path / name, "wb") as fh:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"fine_labels": labels.tolist(),
                         b"coarse_labels": (labels // 5).tolist()}, fh)
    tx, ty, vx, vy = read_cifar(tmp_path, 100)
    assert tx.shape == (200, 3, 32, 32) and tx.dtype == torch.uint8 and vy.tolist() == list(range(100))
    with pytest.raises(FileNotFoundError, match="CIFAR-10"):
        read_cifar(tmp_path, 10)


def test_cifar10_lt_end_to_end_one_epoch(tmp_path):
    """The full-scale path (CIFAR archive -> CIFAR-10-LT -> ResNet-32 -> LDAM + DRW + SAM) for one short epoch."""
    _write_cifar10(tmp_path)
    data = cifar_lt(tmp_path, 10, imbalance_factor=10)
    assert data.cls_num_list == long_tail_counts(12, 10, 10)
    assert data.train_x.shape[1:] == (3, 32, 32) and data.test_y.numel() == 30
    config = json.loads(json.dumps(PRESETS["paper"]))
    config["train"].update(epochs=1, batch_size=16, warmup_epochs=1, drw_start=0.5, workers=0)
    config["data"]["root"] = str(tmp_path)
    method = Method.from_config("ldam_drw_sam", config["methods"]["ldam_drw_sam"])
    saved = {}
    r = train_one(config, method, data, seed=0, device=torch.device("cpu"),
                  checkpoint=lambda tag, m: saved.setdefault(tag, sum(p.numel() for p in m.parameters())))
    n = sum(data.cls_num_list)
    assert r["steps"] == -(-n // 16)  # one epoch: ceil(n / batch) batches, a few
    assert len(r["per_class"]) == 10 and 0.0 <= r["overall"] <= 100.0
    assert np.isfinite(r["final_train_loss"])
    # DRW starts at epoch round(0.5 * 1) = 0 (round half to even), so the pre-DRW model is the initial one
    assert set(saved) == {"predrw", "final"}
    # ResNet-32 (0.46M parameters, PAPERS.md): 464,144 with the bias-free 64x10 cosine head, counted here
    assert saved["final"] == 464144


def test_list_file_parsing(tmp_path):
    f = tmp_path / "train.txt"
    f.write_text("train/n01/a.JPEG 0\ntrain/n02/b c.JPEG 7\n\n")
    assert read_list_file(f) == (["train/n01/a.JPEG", "train/n02/b c.JPEG"], [0, 7])
    f.write_text("only_a_path\n")
    with pytest.raises(ValueError, match="expected 'path label'"):
        read_list_file(f)


def test_list_file_data_set_reads_images(tmp_path):
    from PIL import Image

    from benchmarks.longtail.data import list_file_lt

    (tmp_path / "img").mkdir()
    for i in range(3):
        Image.new("RGB", (40, 30), (10 * i, 0, 0)).save(tmp_path / "img" / f"{i}.png")
    (tmp_path / "train.txt").write_text("img/0.png 0\nimg/1.png 0\nimg/2.png 1\n")
    (tmp_path / "test.txt").write_text("img/2.png 1\nimg/0.png 0\n")
    data = list_file_lt("imagenet-lt", tmp_path, tmp_path / "train.txt", tmp_path / "test.txt", image_size=16)
    assert data.cls_num_list == [2, 1] and data.num_classes == 2
    x, y = data.train_set[2]
    assert x.shape == (3, 16, 16) and y == 1


@pytest.mark.parametrize(("cfg", "match"), [({"name": "cifar10-lt", "imbalance_factor": 100}, "data.root"),
                                            ({"name": "imagenet-lt", "root": "x"}, "data.train_list"),
                                            ({"name": "mnist"}, "data.name")])
def test_load_data_names_what_is_missing(cfg, match):
    from benchmarks.longtail.data import load_data

    with pytest.raises(ValueError, match=match):
        load_data(cfg)


# ----------------------------------------------------------------------------- training pieces


def test_shift_and_flip_moves_pixels_exactly():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    fill = torch.full((1, 1, 1, 1), -1.0)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(shift_and_flip(x, 0, False, fill, g), x)
    out = shift_and_flip(x, 1, False, fill, torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(x + 1, (1, 1, 1, 1)) - 1
    for i in range(2):  # every output is one of the nine +-1 shifts, with the fill outside the image
        assert any(torch.equal(out[i], padded[i, :, dy : dy + 4, dx : dx + 4]) for dy in range(3) for dx in range(3))
    flipped = shift_and_flip(x, 0, True, fill, torch.Generator().manual_seed(0))
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1))


def test_lr_schedule_is_the_ldam_drw_recipe():
    decays = [[0.8, 0.01], [0.9, 1e-4]]
    f = [lr_factor(e, 200, 5, decays) for e in range(200)]
    assert f[:5] == [0.2, 0.4, 0.6, 0.8, 1.0]  # linear warm-up over 5 epochs
    assert f[5] == f[159] == 1.0 and f[160] == f[179] == 0.01 and f[180] == f[199] == 1e-4


def test_rho_schedule_rises_when_reweighting_starts():
    config = json.loads(json.dumps(PRESETS["cpu"]))
    model = torch.nn.Linear(2, 2)
    method = Method.from_config("s", config["methods"]["ldam_drw_sam_sched"])
    opt = build_optimizer(method, model, torch.nn.CrossEntropyLoss(), config["train"], steps_per_epoch=3)
    rho = opt.param_groups[0]["rho"]
    # 200 epochs of 3 steps: warm-up ends at epoch 5 (step 15), DRW starts at epoch 160 (step 480)
    assert [rho(s) for s in (0, 14, 15, 479, 480, 599)] == [0.05, 0.05, 0.1, 0.1, 0.5, 0.5]


@pytest.mark.parametrize("loss", ["ce", "ldam", "vs"])
def test_drw_switch_changes_the_loss(loss):
    counts = [50, 10, 2]
    fn = build_loss(Method("m", loss), counts, {})
    z, y = torch.randn(6, 3).clamp(-1, 1), torch.tensor([0, 1, 2, 2, 1, 0])
    plain = fn(z, y)
    set_loss_weight(fn, torch.tensor([0.1, 1.0, 2.0]), torch.device("cpu"))
    weighted = fn(z, y)
    set_loss_weight(fn, None, torch.device("cpu"))
    assert not torch.allclose(plain, weighted) and torch.equal(fn(z, y), plain)


@pytest.mark.parametrize(("row", "options", "counter"), [
    ("ldam_drw_pgd", {"threshold": 1e9, "interval": 1}, "perturbations"),  # jump whenever allowed
    ("ldam_drw_negcurv", {"every": 1}, "escapes"),  # a Lanczos check on every batch
])
def test_saddle_escape_rows_act(row, options, counter):
    config = json.loads(json.dumps(PRESETS["smoke"]))
    config["train"]["epochs"] = 1
    m = config["methods"][row]
    m["options"] = {**m["options"], **options}
    data = digits_lt()
    r = train_one(config, Method.from_config(row, m), data, seed=0, device=torch.device("cpu"))
    # 363 images in batches of 128: 3 steps; PGD may jump on each, the escape steps when lambda_min < -1e-3
    assert r["steps"] == 3 and 1 <= r[counter] <= 3
    assert np.isfinite(r["final_train_loss"])


@pytest.mark.parametrize("arch", ["digits_cnn", "resnet32"])
@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_models_shapes(arch, head):
    m = build_model(arch, 10, head).eval()
    x = torch.randn(2, 1, 8, 8) if arch == "digits_cnn" else torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        z = m(x)
    assert z.shape == (2, 10)
    if head == "cosine":
        assert float(z.abs().max()) <= 1.0 + 1e-6


# ----------------------------------------------------------------------------- the grid


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_are_complete(preset):
    cfg = PRESETS[preset]
    for name, m in cfg["methods"].items():
        method = Method.from_config(name, m)
        assert method.loss in ("ce", "ldam", "vs")
        if method.optimizer == "sam":
            assert (method.rho is None) != (method.rho_values is None)
    for a, b in cfg["comparisons"]:
        assert a in cfg["methods"] and b in cfg["methods"]
    assert {"ldam_drw", "ldam_drw_sam", "vs", "vs_sam"} <= set(cfg["paired_methods"])
    keys = units(cfg, [0, 1, 2])
    assert len(keys) == len(set(keys))
    assert keys[0].startswith("train_") and all(parse_key(k)[0] in ("train", "spectrum") for k in keys)


def test_paper_preset_takes_list_file_overrides():
    from benchmarks._harness import resolve_config

    cfg = resolve_config(EXPERIMENT, "paper", {"data.name": "imagenet-lt", "data.root": "/x", "data.train_list": "a",
                                               "data.test_list": "b", "model": "resnet50"})
    keys = units(cfg, [0, 1, 2])
    assert keys and not any(k.startswith("spectrum_") for k in keys)  # no spectra on list-file data


def test_parse_key_round_trip():
    assert parse_key("train_ldam_drw_sam_seed12") == ("train", "ldam_drw_sam", None, 12)
    assert parse_key("spectrum_vs_sam_predrw_seed0") == ("spectrum", "vs_sam", "predrw", 0)


def test_smoke_preset_runs_and_reports(tmp_path):
    results = run_experiment(EXPERIMENT, preset="smoke", out=tmp_path, device=torch.device("cpu"), seeds=[0, 1],
                             show_progress=False)
    out = tmp_path / "longtail"
    report = (out / "report.md").read_text()
    assert "LDAM + DRW + SAM vs LDAM + DRW" in report and "VS + SAM vs VS" in report
    trains = [k for k in results if k.startswith("train_")]
    assert {parse_key(k)[1] for k in trains} >= {"ce", "ldam_drw", "ldam_drw_sam", "vs", "vs_sam"}
    for k in trains:
        assert len(results[k]["per_class"]) == 10
    if any(k.startswith("spectrum_") for k in results):
        assert (out / "figures" / "longtail_sam_lambda_min.png").exists()
        assert (out / "figures" / "longtail_density_ldam_drw_final.png").exists()
