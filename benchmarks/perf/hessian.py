"""smoothopt.hessian against PyHessian 0.1: top-1, top-5, trace, density and the per-class pass.

Run ``python -m benchmarks perf hessian`` (one CPU thread, a few minutes). Two float32 models on
synthetic 10-class data (long-tailed, 100 down to 10 samples per class), each briefly trained:

- ``mlp``: 784-300-100-10 tanh MLP, 266,610 parameters;
- ``cnn``: two 3x3 conv layers (8 and 16 channels) and a linear head on 1x16x16 images.

Every method sees the whole data set as one in-memory batch (PyHessian's ``data=`` path, which
reuses the gradient graph like our ``"graph"`` engine). Errors are relative to a converged reference:
Lanczos with full re-orthogonalisation on a float64 copy of the model (``--ref-steps`` steps, residuals
below 1e-9 of lambda_max). Timings are interleaved in one process (PyHessian and ours alternate); each
cell is the median of ``--repeats`` runs, in elapsed or in CPU seconds (``--clock``).

PyHessian's ``density()`` calls ``torch.eig``, removed from torch; for this benchmark only, a shim
returning ``torch.linalg.eigh``'s values in ``torch.eig``'s layout is patched in while it runs
(:func:`_torch_eig_shim`). PyHessian also leaves graph-carrying ``.grad`` on the model and the model in
eval mode; the gradients are cleared after each of its objects.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from benchmarks._io import write_json, write_text
from smoothopt.hessian import HessianOperator, hessian_spectrum, hutchinson, lanczos, per_class_spectra, slq

COUNTS = [100, 77, 60, 46, 36, 28, 22, 17, 13, 10]  # IF 10, 409 samples


def make_data(kind: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(COUNTS)])
    shape = (784,) if kind == "mlp" else (1, 16, 16)
    centers = torch.randn(10, *shape, generator=g)
    x = centers[y] + 1.5 * torch.randn(y.numel(), *shape, generator=g)
    return x, y


def make_model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(784, 300), nn.Tanh(), nn.Linear(300, 100), nn.Tanh(), nn.Linear(100, 10))
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    )


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (64,), generator=g)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    model.zero_grad(set_to_none=True)


@contextlib.contextmanager
def _torch_eig_shim() -> Iterator[None]:
    """Provide the removed ``torch.eig(T, eigenvectors=True)`` for PyHessian's symmetric tridiagonal T."""

    def eig(t: torch.Tensor, eigenvectors: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        values, vectors = torch.linalg.eigh(t)
        return torch.stack([values, torch.zeros_like(values)], dim=1), vectors

    had = hasattr(torch, "eig")
    old = getattr(torch, "eig", None)
    torch.eig = eig  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if had:
            torch.eig = old  # type: ignore[attr-defined]
        else:
            del torch.eig  # type: ignore[attr-defined]


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "process": time.process_time}
CLOCK = CLOCKS["wall"]


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = CLOCK()
        out = fn()
        times.append(CLOCK() - t0)
    return statistics.median(times), out


def timed_pair(fn_a: Callable[[], Any], fn_b: Callable[[], Any], repeats: int) -> tuple[float, Any, float, Any]:
    """Median times of two functions run alternately (a, b, a, b, ...), so that load changes hit both."""
    ta, tb, out_a, out_b = [], [], None, None
    for _ in range(repeats):
        t0 = CLOCK()
        out_a = fn_a()
        ta.append(CLOCK() - t0)
        t0 = CLOCK()
        out_b = fn_b()
        tb.append(CLOCK() - t0)
    return statistics.median(ta), out_a, statistics.median(tb), out_b


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def run_model(kind: str, args: argparse.Namespace, pyhessian: Any) -> dict[str, Any]:
    x, y = make_data(kind)
    model = make_model(kind)
    train(model, x, y, args.train_steps)
    n = sum(p.numel() for p in model.parameters())
    res: dict[str, Any] = {"model": kind, "params": n, "samples": int(y.numel())}
    print(f"\n== {kind}: {n:,} parameters, {y.numel()} samples", flush=True)

    # Reference: float64 Lanczos to residual 1e-9 * lambda_max, top-5 and bottom-1.
    ref_model = copy.deepcopy(model).double()
    t0 = time.perf_counter()
    ref = lanczos(HessianOperator(ref_model, F.cross_entropy, (x.double(), y)), 5, max_steps=args.ref_steps,
                  tol=1e-9, seed=0)
    res["reference"] = {"top5": ref.top.tolist(), "bottom1": float(ref.bottom[0]), "converged": ref.converged,
                        "steps": ref.num_steps, "seconds": time.perf_counter() - t0}
    print(f"reference: top5 {[f'{v:.6g}' for v in ref.top.tolist()]}  lambda_min {float(ref.bottom[0]):.6g}  "
          f"({ref.num_steps} steps, converged={ref.converged})", flush=True)
    top5 = ref.top.tolist()

    def py_obj():
        # PyHessian draws its vectors from the global generator: the same ones in every repeat.
        torch.manual_seed(0)
        model.zero_grad(set_to_none=True)
        return pyhessian.hessian(model, F.cross_entropy, data=(x, y), cuda=False)

    def ours_op():
        return HessianOperator(model, F.cross_entropy, (x, y))

    rows = []

    def record(task: str, t_py: float, t_ours: float, err_py: float, err_ours: float, note: str = "") -> None:
        rows.append({"task": task, "pyhessian_s": t_py, "ours_s": t_ours, "speedup": t_py / t_ours,
                     "pyhessian_err": err_py, "ours_err": err_ours, "note": note})
        print(f"{task:>12}: pyhessian {t_py:7.2f} s (err {err_py:.1e})  ours {t_ours:7.2f} s (err {err_ours:.1e})  "
              f"speed-up {t_py / t_ours:5.2f}x {note}", flush=True)

    # top-1 and top-5: PyHessian's defaults (maxIter=100, tol=1e-3) against Lanczos.
    for k, steps in ((1, args.lanczos_steps_top1), (5, args.lanczos_steps)):
        torch.manual_seed(0)
        t_py, (vals, _), t_ours, ours = timed_pair(
            lambda k=k: py_obj().eigenvalues(top_n=k),
            lambda k=k, s=steps: lanczos(ours_op(), k, which="top", max_steps=s, tol=0.0, seed=0), args.repeats)
        err_py = max(rel(v, r) for v, r in zip(vals, top5[:k]))
        err_ours = max(rel(v, r) for v, r in zip(ours.top.tolist(), top5[:k]))
        record(f"top-{k}", t_py, t_ours, err_py, err_ours, f"(Lanczos {steps} steps)")

    # trace, 100 Rademacher probes each (PyHessian's tol=0 disables its early stop).
    torch.manual_seed(0)
    t_py, samples, t_ours, est = timed_pair(lambda: py_obj().trace(maxIter=args.trace_probes, tol=0.0),
                                            lambda: hutchinson(ours_op(), args.trace_probes, seed=0), args.repeats)
    py_mean = statistics.fmean(samples)
    py_se = statistics.stdev(samples) / math.sqrt(len(samples))
    res["trace"] = {"pyhessian": [py_mean, py_se], "ours": [est.trace, est.stderr]}
    z = abs(py_mean - est.trace) / math.hypot(py_se, est.stderr)
    record("trace", t_py, t_ours, py_se / abs(py_mean), est.stderr / abs(est.trace),
           f"(err = stderr/trace; estimates {py_mean:.5g}+-{py_se:.2g} vs {est.trace:.5g}+-{est.stderr:.2g}, "
           f"{z:.1f} joint SE apart)")

    # density: 4 probes of 100 Lanczos steps; error = largest node against lambda_max.
    torch.manual_seed(0)
    with _torch_eig_shim():
        t_py, (nodes, weights), t_ours, dens = timed_pair(
            lambda: py_obj().density(iter=args.density_steps, n_v=args.density_probes),
            lambda: slq(ours_op(), args.density_steps, args.density_probes, seed=0), args.repeats)
    py_top = max(max(row) for row in nodes)
    py_m1 = statistics.fmean(sum(w * t for w, t in zip(wr, nr)) for wr, nr in zip(weights, nodes))
    res["density"] = {"pyhessian_top_node": py_top, "ours_top_node": dens.spectral_range[1],
                      "pyhessian_moment1": py_m1, "ours_moment1": dens.moment(1),
                      "ours_negative_mass": dens.negative_mass()}
    record("density", t_py, t_ours, rel(py_top, top5[0]), rel(dens.spectral_range[1], top5[0]),
           f"(err = top node vs lambda_max; moment1 {py_m1:.4g} vs {dens.moment(1):.4g})")
    model.zero_grad(set_to_none=True)
    res["rows"] = rows

    # per-class: lock step over class-sorted batches vs one full-data spectrum over batches of the same
    # size vs one run per class; the data are class-sorted already, so the full-data batches are too.
    bs = args.batch_size
    batches = [(x[i : i + bs], y[i : i + bs]) for i in range(0, y.numel(), bs)]
    kw = {"k": 1, "num_steps": args.density_steps, "eig_steps": args.lanczos_steps,
          "density_probes": args.density_probes, "trace_probes": 0, "tol": 0.0, "seed": 0}
    t_full, full = timed(lambda: hessian_spectrum(model, F.cross_entropy, batches, engine="graph", **kw), args.repeats)
    t_one, _ = timed(lambda: hessian_spectrum(model, F.cross_entropy, (x, y), **kw), args.repeats)
    t_pc, pc = timed(lambda: per_class_spectra(model, F.cross_entropy, (x, y), 10, batch_size=bs, **kw),
                     args.repeats)
    t_sep, sep = timed(lambda: [hessian_spectrum(model, F.cross_entropy, (x[y == c], y[y == c]), **kw)
                                for c in range(10)], args.repeats)
    agree = max(rel(pc[c].lambda_max, sep[c].lambda_max) for c in range(10))
    # Why lock step and separate runs can differ: the timed runs stop the eigenvalue chains at a fixed step
    # count from different start vectors, and float32 products of a well-fitted class's Hessian carry
    # cancellation error (softmax curvature p(1 - p) with p near 1). Untimed check: both converged, on a
    # float64 copy of the model, must agree to the tolerance; the float32 product error per class is shown too.
    bound = max(float(pc[c].top_residuals[0]) / abs(pc[c].lambda_max) for c in range(10))
    m64, x64 = copy.deepcopy(model).double(), x.double()
    kw_conv = {**kw, "num_steps": 1, "density_probes": 1, "eig_steps": args.ref_steps, "tol": 1e-9}
    pc_conv = per_class_spectra(m64, F.cross_entropy, (x64, y), 10, batch_size=bs, **kw_conv)
    sep_conv = [hessian_spectrum(m64, F.cross_entropy, (x64[y == c], y[y == c]), **kw_conv) for c in range(10)]
    agree_conv = max(rel(pc_conv[c].lambda_max, sep_conv[c].lambda_max) for c in range(10))
    converged = all(s.converged for s in [*pc_conv.classes, *sep_conv])
    hv_err = []
    for c in range(10):
        v = torch.randn(2, n, generator=torch.Generator().manual_seed(c), dtype=torch.float64)
        exact = HessianOperator(m64, F.cross_entropy, (x64[y == c], y[y == c])).matvec(v)
        approx = HessianOperator(model, F.cross_entropy, (x[y == c], y[y == c])).matvec(v.float()).double()
        hv_err.append(float(((approx - exact).norm(dim=1) / exact.norm(dim=1)).max()))
    err32 = max(rel(pc[c].lambda_max, pc_conv[c].lambda_max) for c in range(10))
    res["per_class"] = {
        "batch_size": bs, "full_batches": len(batches), "full_s": t_full, "full_one_batch_s": t_one,
        "per_class_s": t_pc, "separate_s": t_sep, "ratio_to_full": t_pc / t_full,
        "ratio_to_full_one_batch": t_pc / t_one, "ratio_separate_to_full": t_sep / t_full,
        "max_rel_diff_lambda_max_vs_separate": agree, "max_rel_residual_lambda_max": bound,
        "float64_converged_max_rel_diff_lambda_max_vs_separate": agree_conv, "float64_runs_converged": converged,
        "float32_max_rel_err_lambda_max_vs_float64": err32, "float32_rel_err_hv_per_class": hv_err,
        "full_lambda_max": full.lambda_max, "table": pc.table(),
    }
    print(f"{'per-class':>12}: full-data spectrum {t_full:.2f} s over {len(batches)} batches of <= {bs} "
          f"({t_one:.2f} s as one batch); all 10 classes in lock step {t_pc:.2f} s ({t_pc / t_full:.2f}x; "
          f"{t_pc / t_one:.2f}x of one batch); 10 separate runs {t_sep:.2f} s ({t_sep / t_full:.2f}x); "
          f"lambda_max lock-step vs separate: max rel. diff {agree:.1e} (largest residual / lambda_max {bound:.1e}); "
          f"float64, converged to 1e-9: {agree_conv:.1e} (converged={converged}); float32 lambda_max vs float64 "
          f"{err32:.1e}, float32 H v error per class up to {max(hv_err):.1e}", flush=True)
    return res


def markdown(results: list[dict[str, Any]], command: str) -> str:
    lines = ["# smoothopt.hessian vs PyHessian 0.1", "", f"Command: `{command}`", ""]
    for r in results:
        lines += [f"## {r['model']} ({r['params']:,} parameters, {r['samples']} samples)", "",
                  "| task | PyHessian s | ours s | speed-up | PyHessian rel. err | ours rel. err | note |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for row in r["rows"]:
            lines.append(f"| {row['task']} | {row['pyhessian_s']:.2f} | {row['ours_s']:.2f} | {row['speedup']:.2f}x | "
                         f"{row['pyhessian_err']:.1e} | {row['ours_err']:.1e} | {row['note']} |")
        p = r["per_class"]
        lines += ["", f"Per-class (10 classes, batches of <= {p['batch_size']}): full-data spectrum "
                  f"{p['full_s']:.2f} s ({p['full_one_batch_s']:.2f} s as one batch of all samples), all ten in "
                  f"lock step {p['per_class_s']:.2f} s (**{p['ratio_to_full']:.2f}x**; "
                  f"{p['ratio_to_full_one_batch']:.2f}x of the one-batch run), ten separate runs "
                  f"{p['separate_s']:.2f} s ({p['ratio_separate_to_full']:.2f}x). lambda_max, lock step against "
                  f"separate runs: {p['max_rel_diff_lambda_max_vs_separate']:.1e} relative at the timed step count "
                  f"(largest residual {p['max_rel_residual_lambda_max']:.1e} of lambda_max), "
                  f"{p['float64_converged_max_rel_diff_lambda_max_vs_separate']:.1e} with both converged to 1e-9 on a "
                  f"float64 copy; the float32 lambda_max is {p['float32_max_rel_err_lambda_max_vs_float64']:.1e} "
                  f"from the float64 one, its products up to {max(p['float32_rel_err_hv_per_class']):.1e} (largest "
                  f"relative error of H_c v over the classes).", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks perf hessian", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=["mlp", "cnn"], default=["mlp", "cnn"])
    parser.add_argument("--repeats", type=int, default=1, help="timings per cell, median reported (default 1)")
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--ref-steps", type=int, default=300)
    parser.add_argument("--lanczos-steps", type=int, default=30, help="Lanczos steps for top-5 (default 30)")
    parser.add_argument("--lanczos-steps-top1", type=int, default=15)
    parser.add_argument("--trace-probes", type=int, default=100)
    parser.add_argument("--density-steps", type=int, default=100)
    parser.add_argument("--density-probes", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64, help="batch size of the per-class comparison")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall: elapsed seconds; process: CPU seconds of this process, which other jobs "
                             "sharing the cores do not inflate (default wall)")
    parser.add_argument("--out", type=Path, default=Path("runs/perf/hessian"))
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    try:
        import pyhessian
    except ImportError:
        print("pyhessian is not installed: pip install --no-deps 'pyhessian>=0.1' (the crosscheck extra)")
        return 1
    results = [run_model(kind, args, pyhessian) for kind in args.models]
    command = "python -m benchmarks perf hessian" + ("" if argv is None else " " + " ".join(argv))
    config = {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "torch": torch.__version__,
              "python": platform.python_version(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    write_json(args.out / "results.json", {"config": config, "command": command, "results": results})
    write_text(args.out / "report.md", markdown(results, command))
    print(f"\nwrote {args.out / 'report.md'}")
    print(json.dumps({r["model"]: {row["task"]: round(row["speedup"], 2) for row in r["rows"]} for r in results}))
    return 0
