"""The reproduction's units of work: one trained model (or one recursive chain) per key and seed.

Unit keys (``{seed}`` is the seed):

- ``oned_m{means}_n{N}_r{replicate}_s{seed}``: 1D mixture, interpolation and detection; the
  replicates are independent data sets and models (seed ``100 * seed + replicate``), so that a
  rate can be given with a confidence interval;
- ``grid_s{seed}``, ``grid_rotated_s{seed}``: the 2D grid and its diamond variant;
- ``shapes_s{seed}``: SIMPLE SHAPES with a small U-Net;
- ``recursive_{grid,digits}_{variance,random}_s{seed}``: five generations of recursive training.

Every unit returns a JSON-serialisable dict; the samples and scores behind the figures go to
``samples/KEY.pt`` and the trained weights to ``checkpoints/``. Each result's ``cost`` maps the
checkpoints and sample caches it used to the wall and CPU seconds it took to make them (recorded
when they were made, so a unit that reuses them still reports what they cost).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

import torch
from torch import nn

from benchmarks._dist import gather_objects
from benchmarks._harness import RunContext
from benchmarks._io import save_torch
from benchmarks.hallucination import data as D
from benchmarks.hallucination import labels as L
from benchmarks.hallucination.diffusion import LinearSchedule
from benchmarks.hallucination.models import ShapesUNet, ToyDenoiser
from benchmarks.hallucination.train import sample_scored, train_denoiser

logger = logging.getLogger(__name__)


def _means_tag(means: list[float]) -> str:
    """File-name-safe tag of a list of means: ``[1, 2, 3] -> "123"``, ``[-1, 2.5] -> "n12p5"``."""
    def one(m: float) -> str:
        text = str(int(m)) if float(m).is_integer() else str(m).replace(".", "p")
        return text.replace("-", "n")

    return "".join(one(m) for m in means)


def unit_keys(config: dict[str, Any], seeds: list[int]) -> list[str]:
    """All unit keys of a configuration, in the order of the issue's "must show" list."""
    keys: list[str] = []
    for s in seeds:
        od = config["oned"]
        for means in od["means"]:
            sizes = od["sizes"] if means == od["means"][0] else od["sizes"][-1:]
            keys += [f"oned_m{_means_tag(means)}_n{n}_r{r}_s{s}" for n in sizes for r in range(od["replicates"])]
        keys.append(f"grid_s{s}")
        if config["recursive_grid"]["enabled"]:
            keys += [f"recursive_grid_{arm}_s{s}" for arm in ("variance", "random")]
        if config["shapes"]["enabled"]:
            keys.append(f"shapes_s{s}")
        keys.append(f"grid_rotated_s{s}")
        if config["recursive_digits"]["enabled"]:
            keys += [f"recursive_digits_{arm}_s{s}" for arm in ("variance", "random")]
    return keys


def _parse_key(key: str) -> tuple[str, dict[str, Any]]:
    *body, seed = key.split("_")
    info: dict[str, Any] = {"seed": int(seed[1:])}
    kind = body[0]
    if kind == "oned":
        info["tag"], info["n"], info["replicate"] = body[1][1:], int(body[2][1:]), int(body[3][1:])
    elif kind == "grid":
        info["rotated"] = len(body) > 1
    elif kind == "recursive":
        info["data"], info["arm"] = body[1], body[2]
    return kind, info


# ---------------------------------------------------------------- scores and metrics


def _schedule(config: dict[str, Any]) -> LinearSchedule:
    sc = config["schedule"]
    return LinearSchedule(sc["num_train_timesteps"], sc["beta_start"], sc["beta_end"])


def make_tracker(window: str) -> Any:
    """``hallucfilter.TrajectoryVariance`` for a window given by name.

    ``"K10"``: the last 10 reverse steps (by position); ``"t10"``: every step with timestep
    ``t < 10`` (the window by noise level, the same stretch of the process for any step count).
    """
    import hallucfilter

    kind, value = window[:1], window[1:]
    if kind == "K" and value.isdigit():
        return hallucfilter.TrajectoryVariance(last_k=int(value))
    if kind == "t" and value.isdigit():
        return hallucfilter.TrajectoryVariance(timestep_below=int(value))
    raise ValueError(f"window must look like 'K10' (last steps) or 't10' (timestep below), got {window!r}")


def select_window(detection: dict[str, dict[str, float | None]]) -> str:
    """The window with the highest removal at the retention target, ties broken by AUROC.

    Used on a separate draw of samples (``select_samples``), so that the window reported on the main
    draw was not picked on the samples it is reported on.

    Raises:
        ValueError: If no window has a defined removal rate (no hallucination in the draw).
    """
    ranked = [(d["removal_at_retention"], d["auroc"], w) for w, d in detection.items()
              if d["removal_at_retention"] is not None]
    if not ranked:
        raise ValueError("cannot select a window: the selection draw has no out-of-support sample "
                         "(draw more with select_samples)")
    return max(ranked, key=lambda r: (r[0], r[1]))[2]


def _observer_factory(windows: list[str]):
    def make() -> dict[str, Any]:
        return {w: make_tracker(w) for w in windows}

    return make


def detection_metrics(scores: dict[str, torch.Tensor], hallucinated: torch.Tensor,
                      retention: float, removal: float) -> dict[str, dict[str, float | None]]:
    """AUROC, removal at ``retention`` and retention at ``removal``, per score (window).

    ``None`` where a population is empty (no hallucinations, say).
    """
    import hallucfilter

    out: dict[str, dict[str, float | None]] = {}
    bad = hallucinated.bool()
    for name, s in scores.items():
        if bad.all() or not bad.any():
            out[name] = {"auroc": None, "removal_at_retention": None, "retention_at_removal": None}
            continue
        s_in, s_out = s[~bad], s[bad]
        out[name] = {
            "auroc": float(hallucfilter.auroc(s_in, s_out)),
            "removal_at_retention": float(hallucfilter.removal_at_retention(s_in, s_out, retention=retention)),
            "retention_at_removal": float(hallucfilter.retention_at_removal(s_in, s_out, removal=removal)),
        }
    return out


# Section keys that do not change what a unit's model learns (the unit's key names its data).
_NOT_TRAINING = frozenset({"sizes", "means", "samples", "sample_steps", "sample_batch", "write_png", "windows",
                           "enabled", "generations", "classifier_steps", "replicates", "select_samples"})


def _train_or_load(model: nn.Module, data: torch.Tensor, config: dict[str, Any], section: dict[str, Any],
                   key: str, seed: int, ctx: RunContext) -> dict[str, Any]:
    """Train ``model`` unless a checkpoint of the same unit and settings holds its weights.

    The checkpoint's name carries a hash of the schedule and of the section's settings, so a
    rerun with changed settings trains afresh, and one with the same settings (an interrupted
    run, or ``--restart`` after changing another section) reuses the weights.
    """
    settings = {k: v for k, v in section.items() if k not in _NOT_TRAINING}
    digest = hashlib.sha256(json.dumps([config["schedule"], settings], sort_keys=True).encode()).hexdigest()[:10]
    path = ctx.path("checkpoints", f"{key}-{digest}.pt")
    exists = gather_objects(path.exists())[0]
    if exists:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        model.to(ctx.device).eval()
        return {"final_loss": state["final_loss"], "resumed": True, "digest": digest, "file": path.name,
                "wall_s": state.get("wall_s"), "cpu_s": state.get("cpu_s")}
    info = train_denoiser(
        model, data, _schedule(config), steps=section["steps"], batch_size=section["batch_size"],
        lr=section["lr"], lr_final=section["lr_final"], seed=seed, device=ctx.device,
        t_max=config["schedule"]["train_t_max"], ema_decay=section["ema_decay"],
        progress=lambda it: ctx.progress(it, desc=f"train {key}", total=section["steps"]),
    )
    if ctx.is_main:
        save_torch(path, {"model": model.state_dict(), **info})
    return {**info, "resumed": False, "digest": digest, "file": path.name}


def _cached_sample(key: str, train_info: dict[str, Any], ctx: RunContext, cost: dict[str, Any] | None = None,
                   **kwargs: Any):
    """:func:`_sample`, reusing the samples and scores of an earlier run with the same model and settings.

    When ``cost`` is given, the training and sampling costs (as recorded when the checkpoint and the
    samples were made) are added to it under the files' names.
    """
    spec = {k: v for k, v in kwargs.items() if k not in ("model", "config", "ctx")}
    spec.update(schedule=kwargs["config"]["schedule"], world_size=ctx.world_size)
    digest = hashlib.sha256(json.dumps([train_info["digest"], spec], sort_keys=True, default=str).encode())
    path = ctx.path("cache", f"{key}-{digest.hexdigest()[:10]}.pt")
    if gather_objects(path.exists())[0]:
        cached = torch.load(path, map_location="cpu", weights_only=True)
    else:
        t0, c0 = time.perf_counter(), time.process_time()
        x, scores = _sample(ctx=ctx, **kwargs)
        cached = {"x": x, "scores": scores, "wall_s": round(time.perf_counter() - t0, 3),
                  "cpu_s": round(time.process_time() - c0, 3)}
        if ctx.is_main:
            save_torch(path, cached)
    if cost is not None:
        cost[f"checkpoints/{train_info['file']}"] = {"wall_s": train_info.get("wall_s"),
                                                     "cpu_s": train_info.get("cpu_s")}
        cost[f"cache/{path.name}"] = {"wall_s": cached.get("wall_s"), "cpu_s": cached.get("cpu_s")}
    return cached["x"], cached["scores"]


def _sample(model: nn.Module, config: dict[str, Any], n: int, shape: tuple[int, ...], seed: int, ctx: RunContext,
            num_steps: int | None = None, batch_size: int = 10_000, windows: list[str] | None = None):
    return sample_scored(
        model, _schedule(config).to(ctx.device), n, shape,
        make_observers=_observer_factory(windows or config["windows"]),
        seed=seed + 10_000, device=ctx.device, start=config["schedule"]["start"], num_steps=num_steps,
        batch_size=batch_size,
    )


def _toy_model(dim: int, section: dict[str, Any], seed: int) -> ToyDenoiser:
    torch.manual_seed(seed)
    return ToyDenoiser(dim, width=section["width"], num_blocks=section["num_blocks"], tied=section["tied"])


def _save_samples(ctx: RunContext, key: str, payload: dict[str, Any]) -> str:
    path = ctx.path("samples", f"{key}.pt")
    if ctx.is_main:
        save_torch(path, payload)
    return str(path.relative_to(ctx.out_dir))


# ---------------------------------------------------------------- mixtures


def _mixture_unit(config: dict[str, Any], key: str, mix: D.Mixture, section: dict[str, Any], seed: int,
                  ctx: RunContext, primary: str) -> dict[str, Any]:
    """Train (or load), sample and label one mixture model; ``primary`` is a window name or ``"select"``."""
    dim = mix.x.shape[1]
    model = _toy_model(dim, section, seed)
    train_info = _train_or_load(model, mix.x, config, section, key, seed, ctx)
    cost: dict[str, Any] = {}
    result: dict[str, Any] = {"train": train_info, "primary_window": primary}
    if primary == "select":
        if section["select_samples"] < 1:
            raise ValueError(f"primary window 'select' for {key} needs select_samples >= 1, "
                             f"got {section['select_samples']}")
        # The primary window is chosen on a draw of its own, then reported on the main draw.
        xs, ss = _cached_sample(f"{key}_select", train_info, ctx, cost, model=model, config=config,
                                n=section["select_samples"], shape=(dim,), seed=seed + 50_000,
                                windows=config["windows"])
        bad = (L.mode_distance(xs, mix.modes, mix.std) > config["k_sigma"]) | ~torch.isfinite(xs).all(1)
        det = detection_metrics(ss, bad, config["retention"], config["removal"])
        result["selection"] = {"n_samples": int(xs.shape[0]), "count": int(bad.sum()), "detection": det}
        result["primary_window"] = select_window(det)
    x, scores = _cached_sample(key, train_info, ctx, cost, model=model, config=config, n=section["samples"],
                               shape=(dim,), seed=seed, windows=config["windows"])
    dist = L.mode_distance(x, mix.modes, mix.std)
    finite = torch.isfinite(x).all(1)
    result.update({
        "n_samples": int(x.shape[0]),
        "non_finite": int((~finite).sum()),
        "out_of_support": {},
        "cost": cost,
    })
    for k in (config["k_sigma"], config["k_sigma_alt"]):
        bad = (dist > k) | ~finite
        result["out_of_support"][f"{k:g}sigma"] = {
            "fraction": float(bad.float().mean()),
            "count": int(bad.sum()),
            "detection": detection_metrics(scores, bad, config["retention"], config["removal"]),
        }
    if dim == 1:
        gaps = L.gap_of(x, mix.modes)
        bad = dist > config["k_sigma"]
        means = mix.modes.flatten().tolist()
        # NOTE: "per_neighbour_mass" divides a gap's share by the weight of its two neighbouring modes
        # (2 / number of modes), so gaps of mixtures with different numbers of modes compare.
        result["gaps"] = [
            {"lo": means[j], "hi": means[j + 1], "width": means[j + 1] - means[j],
             "count": int((bad & (gaps == j)).sum()),
             "fraction": float((bad & (gaps == j)).float().mean()),
             "per_neighbour_mass": float((bad & (gaps == j)).float().mean()) * len(means) / 2}
            for j in range(len(means) - 1)
        ]
    result["samples_file"] = _save_samples(ctx, key, {"x": x, "scores": scores, "dist": dist,
                                                      "modes": mix.modes, "std": mix.std})
    return result


def _run_oned(config: dict[str, Any], key: str, info: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    od = config["oned"]
    means = next(m for m in od["means"] if _means_tag(m) == info["tag"])
    seed = 100 * info["seed"] + info["replicate"]
    mix = D.mixture_1d(means, info["n"], seed=seed, std=od["std"])
    out = _mixture_unit(config, key, mix, od, seed, ctx, config["primary_window"]["oned"])
    return {"kind": "oned", "means": means, "n_train": info["n"], "replicate": info["replicate"], "seed": seed,
            **out}


def _run_grid(config: dict[str, Any], key: str, info: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    gd = config["grid"]
    mix = D.grid_2d(gd["n"], seed=info["seed"], std=gd["std"], rotated=info["rotated"])
    out = _mixture_unit(config, key, mix, gd, info["seed"], ctx, config["primary_window"]["grid"])
    return {"kind": "grid", "rotated": info["rotated"], "n_train": gd["n"], **out}


# ---------------------------------------------------------------- SIMPLE SHAPES


def _run_shapes(config: dict[str, Any], key: str, info: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    sh = config["shapes"]
    seed = info["seed"]
    images, meta = D.simple_shapes(sh["n"], seed=seed, size=sh["size"])
    if ctx.is_main and sh["write_png"]:
        D.write_shapes(ctx.path("shapes_data", f"s{seed}", "metadata.json").parent, images[: sh["write_png"]],
                       meta[: sh["write_png"]])
    torch.manual_seed(seed)
    model = ShapesUNet(sh["size"], tuple(sh["channels"]))
    train_info = _train_or_load(model, images * 2.0 - 1.0, config, sh, key, seed, ctx)
    cost: dict[str, Any] = {}
    x, scores = _cached_sample(key, train_info, ctx, cost, model=model, config=config, n=sh["samples"],
                               shape=(1, sh["size"], sh["size"]), seed=seed, num_steps=sh["sample_steps"],
                               batch_size=sh["sample_batch"], windows=sh["windows"])
    imgs = ((x + 1.0) / 2.0).clamp(0, 1)
    counted = L.count_shapes(imgs)
    hallucinated = (counted["counts"] >= 2).any(1)
    empty = counted["counts"].sum(1) == 0
    malformed = (counted["matched"] < counted["counts"]).any(1) & ~hallucinated
    return {
        "kind": "shapes",
        "train": train_info,
        "n_samples": int(x.shape[0]),
        "hallucinated": {"fraction": float(hallucinated.float().mean()), "count": int(hallucinated.sum()),
                         "detection": detection_metrics(scores, hallucinated, config["retention"], config["removal"])},
        "empty_fraction": float(empty.float().mean()),
        "malformed_fraction": float(malformed.float().mean()),
        "per_column_repeats": (counted["counts"] >= 2).float().mean(0).tolist(),
        "cost": cost,
        "samples_file": _save_samples(ctx, key, {"x": x.half(), "scores": scores, "hallucinated": hallucinated,
                                                 "counts": counted["counts"]}),
    }


# ---------------------------------------------------------------- recursive training


def _digits_data(rc: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened digit images in ``[-1, 1]`` and their labels: scikit-learn's digits or MNIST from a folder."""
    if rc["source"] == "digits":
        from benchmarks._digits import load_digits_tensors

        x, y = load_digits_tensors()
    elif rc["source"] == "mnist":
        if not rc["mnist_dir"]:
            raise ValueError("recursive_digits.source='mnist' needs a folder of MNIST IDX files: "
                             "--set recursive_digits.mnist_dir=PATH")
        x, y = D.load_mnist(rc["mnist_dir"])
    else:
        raise ValueError(f"recursive_digits.source must be 'digits' or 'mnist', got {rc['source']!r}")
    return x.flatten(1) * 2.0 - 1.0, y


def _digit_features(x: torch.Tensor, y: torch.Tensor, seed: int, steps: int) -> tuple[nn.Module, torch.Tensor]:
    """A small digit classifier trained on ``(x, y)``; returns its feature extractor and the features of ``x``."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    features = nn.Sequential(nn.Linear(x.shape[1], 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
    clf = nn.Sequential(features, nn.Linear(64, 10))
    opt = torch.optim.Adam(clf.parameters(), lr=3e-3)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (256,), generator=g)
        loss = nn.functional.cross_entropy(clf(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    features.eval()
    with torch.no_grad():
        return features, torch.cat([features(chunk) for chunk in x.split(10_000)])


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    r"""Frechet distance between Gaussians fitted to two feature sets (the FID formula).

    .. math::
        \lVert \mu_a - \mu_b \rVert^2 + \operatorname{tr}(\Sigma_a + \Sigma_b - 2 (\Sigma_a \Sigma_b)^{1/2})

    Note:
        When the covariance product is singular (too few samples, dead features), both
        covariances get ``1e-6`` added to their diagonals before the square root, as FID does.
    """
    import warnings

    import numpy as np
    from scipy import linalg

    a64, b64 = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = a64.mean(0), b64.mean(0)
    cov_a = torch.from_numpy(a64).T.cov().numpy()
    cov_b = torch.from_numpy(b64).T.cov().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error", linalg.LinAlgWarning)
        try:
            covmean = linalg.sqrtm(cov_a @ cov_b)
        except (linalg.LinAlgWarning, linalg.LinAlgError):
            offset = 1e-6 * np.eye(cov_a.shape[0])
            warnings.simplefilter("ignore", linalg.LinAlgWarning)
            covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(((mu_a - mu_b) ** 2).sum() + cov_a.trace() + cov_b.trace() - 2.0 * covmean.trace())


def _run_recursive(config: dict[str, Any], key: str, info: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    import hallucfilter

    which, arm, seed = info["data"], info["arm"], info["seed"]
    rc = config[f"recursive_{which}"]
    if which == "grid":
        mix = D.grid_2d(rc["n"], seed=seed, std=rc["std"])
        real = mix.x
    else:
        real, digit_labels = _digits_data(rc)
        feat_net, real_feats = _digit_features(real, digit_labels, seed, rc["classifier_steps"])
    n = real.shape[0]
    n_draw = int(round(n / (1.0 - rc["filter_fraction"])))
    window = rc["window"]
    from_grid = which == "grid" and rc["gen1_from_grid"]
    # Generations after the first depend on how the first was made.
    chain = {**rc, "gen1": config["grid"] if from_grid else None}
    data = real
    previous: dict[str, torch.Tensor] | None = None
    gens: list[dict[str, Any]] = []
    cost: dict[str, Any] = {}
    for gen in range(1, rc["generations"] + 1):
        if gen == 1 and from_grid:
            # NOTE: generation 1 is the grid experiment's own model (trained on the grid's N real
            # samples); the chain then keeps N = recursive_grid.n samples per generation.
            model = _toy_model(2, config["grid"], seed)
            grid = D.grid_2d(config["grid"]["n"], seed=seed, std=config["grid"]["std"])
            gkey = f"grid_s{seed}"
            train_info = _train_or_load(model, grid.x, config, config["grid"], gkey, seed, ctx)
        else:
            # Generation 1 learns the real data and is shared by both arms.
            gkey = f"recursive_{which}_gen1_s{seed}" if gen == 1 else f"{key}_gen{gen}"
            model = _toy_model(real.shape[1], rc, seed + gen)
            if rc["warm_start"] and previous is not None:
                # NOTE: a CPU-budget deviation: the paper trains a fresh model per generation.
                model.load_state_dict(previous)
            train_info = _train_or_load(model, data, config, chain, gkey, seed + gen, ctx)
        previous = {k: v.detach().clone() for k, v in model.state_dict().items()}
        x, scores = _cached_sample(gkey, train_info, ctx, cost, model=model, config=config, n=n_draw,
                                   shape=(real.shape[1],), seed=seed + 100 * gen, windows=[window])
        finite = torch.isfinite(x).all(1)
        s = torch.where(finite, scores[window], torch.full_like(scores[window], float("inf")))
        if arm == "variance":
            keep = hallucfilter.rank_filter(s, n)
        else:
            g = torch.Generator().manual_seed(seed * 7919 + gen)
            keep = torch.randperm(n_draw, generator=g)[:n].sort().values
        kept = x[keep]
        row: dict[str, Any] = {"generation": gen, "final_loss": train_info["final_loss"],
                               "non_finite": int((~finite).sum())}
        if which == "grid":
            bad = (L.mode_distance(x, mix.modes, mix.std) > config["k_sigma"]) | ~finite
            row["hallucinated_drawn"] = float(bad.float().mean())
            row["hallucinated_kept"] = float(bad[keep].float().mean())
        else:
            with torch.no_grad():
                row["frechet_kept"] = frechet_distance(feat_net(kept[torch.isfinite(kept).all(1)]), real_feats)
                row["frechet_drawn"] = frechet_distance(feat_net(x[finite]), real_feats)
        gens.append(row)
        logger.info("%s generation %d: %s", key, gen, row)
        if gen == rc["generations"]:
            _save_samples(ctx, key, {"x": kept, "modes": mix.modes if which == "grid" else None})
        data = kept[torch.isfinite(kept).all(1)]
    return {"kind": "recursive", "data": which, "arm": arm, "n": n, "n_draw": n_draw, "generations": gens,
            "cost": cost}


def run_unit(config: dict[str, Any], key: str, ctx: RunContext) -> dict[str, Any]:
    """Run one unit (see the module docstring for the keys)."""
    kind, info = _parse_key(key)
    runners = {"oned": _run_oned, "grid": _run_grid, "shapes": _run_shapes, "recursive": _run_recursive}
    if kind not in runners:
        raise ValueError(f"unknown unit key {key!r}")
    return runners[kind](config, key, info, ctx)
