"""Cost of the hallucfilter hook: overhead per sampling step, and memory against the window length.

``python -m benchmarks perf hallucfilter [--scheduler ddim --steps 10 --batch 8 --repeats 20]``

1. Overhead: a tiny ``UNet2DModel`` (built from a config, random weights, 3x32x32) sampled by diffusers'
   ``DDPMPipeline`` with the chosen scheduler, hooked (``hallucfilter.attach(last_k=...)``) and unhooked
   in interleaved order (ABBA pairs, after a warm-up), same seed each run. Reported: median seconds per
   run, the per-pair relative difference (median and a bootstrap 95% interval; and the fastest hooked
   run against the fastest plain one), the same per-pair difference of process CPU time (less
   disturbed by other processes on a shared machine than wall time), the hook's absolute
   cost per step measured in isolation (hooked minus plain ``scheduler.step`` on fixed tensors), and
   that cost as a share of one pipeline step. Outputs are also checked to be bit-identical.
2. Memory: ``TrajectoryVariance`` fed a ``--mem-steps``-step trajectory of ``(batch, 3, 64, 64)`` float32
   tensors for several window lengths; reported are the bytes of its state (exact) and the peak rise of
   the process's resident set (``VmHWM`` reset through ``/proc/self/clear_refs`` where Linux allows),
   next to storing the window and calling ``numpy.var`` as the released code does.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._io import write_json
from benchmarks.perf._memory import reset_peak_rss, status_kib

MiB = 2.0**20
# Schedulers whose step() accepts the generator that DDPMPipeline passes (Heun's and UniPC's do not).
SCHEDULERS = ("ddpm", "ddim", "euler", "euler_ancestral", "dpmsolver++", "flow_euler")


def _peak_rss_rise_mib(fn) -> tuple[float, str]:
    rss0 = status_kib("VmRSS")
    reset = rss0 is not None and reset_peak_rss()
    fn()
    if reset:
        return max((status_kib("VmHWM") - rss0) / 1024, 0.0), "VmHWM after clear_refs reset minus VmRSS before"
    return float("nan"), "unavailable (no /proc/self/clear_refs)"


def _make_scheduler(name: str):
    import diffusers

    return {
        "ddpm": lambda: diffusers.DDPMScheduler(),
        "ddim": lambda: diffusers.DDIMScheduler(),
        "euler": lambda: diffusers.EulerDiscreteScheduler(),
        "euler_ancestral": lambda: diffusers.EulerAncestralDiscreteScheduler(),
        "dpmsolver++": lambda: diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++"),
        "flow_euler": lambda: diffusers.FlowMatchEulerDiscreteScheduler(),
    }[name]()


def _tiny_unet(size: int, device: torch.device):
    import diffusers

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=size, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
        norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    return unet.to(device).eval()


def _bootstrap_median_ci(x: np.ndarray, seed: int = 0, n_boot: int = 10_000) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    boots = np.median(x[rng.integers(0, x.size, size=(n_boot, x.size))], axis=1)
    return float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))


def overhead(args: argparse.Namespace, device: torch.device) -> dict:
    import diffusers

    import hallucfilter

    pipe = diffusers.DDPMPipeline(unet=_tiny_unet(args.size, device), scheduler=_make_scheduler(args.scheduler))
    pipe.set_progress_bar_config(disable=True)

    def run():
        g = torch.Generator(device="cpu").manual_seed(args.seed)
        return pipe(batch_size=args.batch, num_inference_steps=args.steps, generator=g, output_type="np").images

    def timed(hooked: bool):
        rec = hallucfilter.attach(pipe.scheduler, last_k=args.last_k) if hooked else None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        images = run()
        if rec is not None:
            rec.scores()  # the one host synchronisation, included in the hooked time
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        if rec is not None:
            rec.detach()
        return seconds, images, cpu_seconds

    for _ in range(args.warmup):
        timed(False)
        timed(True)
    plain, hooked, plain_cpu, hooked_cpu = [], [], [], []
    identical = True
    for r in range(args.repeats):
        order = (False, True) if r % 2 == 0 else (True, False)  # ABBA
        results = {h: timed(h) for h in order}
        plain.append(results[False][0])
        hooked.append(results[True][0])
        plain_cpu.append(results[False][2])
        hooked_cpu.append(results[True][2])
        identical &= bool(np.array_equal(results[False][1], results[True][1]))
    plain_a, hooked_a = np.asarray(plain), np.asarray(hooked)
    rel = hooked_a / plain_a - 1.0
    lo, hi = _bootstrap_median_ci(rel, seed=args.seed)
    rel_cpu = np.asarray(hooked_cpu) / np.asarray(plain_cpu) - 1.0
    lo_cpu, hi_cpu = _bootstrap_median_ci(rel_cpu, seed=args.seed)

    # The hook's own cost per step, isolated from the UNet's run-to-run noise.
    sched = _make_scheduler(args.scheduler)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    out = torch.randn_like(x)

    def step_loop(hooked_step: bool) -> float:
        rec = hallucfilter.attach(sched, last_k=args.last_k) if hooked_step else None
        best = float("inf")
        for _ in range(args.micro_repeats):
            sched.set_timesteps(args.steps)
            g = torch.Generator().manual_seed(0)
            kwargs = {"generator": g}
            t0 = time.perf_counter()
            for t in sched.timesteps:
                sched.step(out, t, x, **kwargs)
            if rec is not None:
                rec.scores()
            best = min(best, time.perf_counter() - t0)
        if rec is not None:
            rec.detach()
        return best

    step_plain = min(step_loop(False) for _ in range(3))
    step_hooked = min(step_loop(True) for _ in range(3))
    per_step_us = (step_hooked - step_plain) / args.steps * 1e6
    pipeline_step_ms = statistics.median(plain) / args.steps * 1e3
    return {
        "plain_median_s": float(np.median(plain_a)),
        "hooked_median_s": float(np.median(hooked_a)),
        "relative_overhead_median": float(np.median(rel)),
        "relative_overhead_ci95": [lo, hi],
        "relative_overhead_mean": float(rel.mean()),
        "relative_overhead_of_minima": float(hooked_a.min() / plain_a.min() - 1.0),
        "relative_cpu_overhead_median": float(np.median(rel_cpu)),
        "relative_cpu_overhead_ci95": [lo_cpu, hi_cpu],
        "bit_identical": identical,
        "hook_cost_per_step_us": per_step_us,
        "pipeline_step_ms": pipeline_step_ms,
        "hook_share_of_step": per_step_us / 1e3 / pipeline_step_ms,
        "plain_s": plain,
        "hooked_s": hooked,
        "plain_cpu_s": plain_cpu,
        "hooked_cpu_s": hooked_cpu,
    }


def memory(args: argparse.Namespace, device: torch.device) -> list[dict]:
    import hallucfilter

    g = torch.Generator().manual_seed(args.seed)
    shape = (args.mem_batch, 3, 64, 64)
    base = torch.randn(shape, generator=g)
    sample_mib = base.numel() * base.element_size() / MiB
    rows = []
    for last_k in args.windows:
        if last_k > args.mem_steps:
            continue

        def streaming(last_k=last_k):
            tracker = hallucfilter.TrajectoryVariance(last_k=last_k)
            for i in range(args.mem_steps):
                tracker.update(base.add(i * 1e-3), step=i, num_steps=args.mem_steps)
            streaming.state_bytes = sum(t.numel() * t.element_size()
                                        for t in (tracker._mean, tracker._m2, tracker._finite))
            streaming.scores = tracker.scores()

        def stored(last_k=last_k):
            window = []
            for i in range(args.mem_steps):
                x0 = base.add(i * 1e-3)
                if i >= args.mem_steps - last_k:
                    window.append(x0.numpy())
            stored.scores = np.var(np.stack(window), axis=0).reshape(shape[0], -1).mean(axis=1)

        rise_stream, method = _peak_rss_rise_mib(streaming)
        rise_stored, _ = _peak_rss_rise_mib(stored)
        np.testing.assert_allclose(streaming.scores.numpy(), stored.scores, rtol=1e-3, atol=1e-9)
        rows.append({"last_k": last_k, "state_mib": streaming.state_bytes / MiB, "streaming_peak_rss_mib": rise_stream,
                     "stored_window_peak_rss_mib": rise_stored, "sample_batch_mib": sample_mib, "method": method})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks perf hallucfilter", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scheduler", choices=SCHEDULERS, default="ddim", help="scheduler in the pipeline (default: ddim)")
    p.add_argument("--steps", type=int, default=10, help="inference steps (default: 10)")
    p.add_argument("--batch", type=int, default=8, help="samples per pipeline call (default: 8)")
    p.add_argument("--size", type=int, default=32, help="image side of the tiny UNet (default: 32)")
    p.add_argument("--last-k", type=int, default=5, help="window of the hook (default: 5)")
    p.add_argument("--repeats", type=int, default=20, help="hooked/unhooked pairs (default: 20)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up pairs, not timed (default: 2)")
    p.add_argument("--micro-repeats", type=int, default=20, help="repeats of the isolated step loop (default: 20)")
    p.add_argument("--windows", type=int, nargs="+", default=[1, 10, 100, 400], help="window lengths for memory")
    p.add_argument("--mem-steps", type=int, default=400, help="trajectory length for memory (default: 400)")
    p.add_argument("--mem-batch", type=int, default=16, help="batch for memory (default: 16)")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True, help="run the memory part")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/perf/hallucfilter.json"), help="JSON results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config.update(torch=torch.__version__, python=platform.python_version(), machine=platform.machine())
    try:
        import diffusers

        config["diffusers"] = diffusers.__version__
    except ImportError:
        print("this benchmark needs diffusers: pip install 'smoothopt[bench]'")
        return 1

    ov = overhead(args, device)
    print(f"# hallucfilter hook overhead ({args.scheduler}, {args.steps} steps, batch {args.batch}, "
          f"{args.size}x{args.size}, last_k={args.last_k}, {args.repeats} interleaved pairs, device {device})")
    print(f"plain pipeline  : median {ov['plain_median_s'] * 1e3:.1f} ms/run ({ov['pipeline_step_ms']:.2f} ms/step)")
    print(f"hooked pipeline : median {ov['hooked_median_s'] * 1e3:.1f} ms/run")
    lo, hi = ov["relative_overhead_ci95"]
    print(f"end-to-end      : {ov['relative_overhead_median'] * 100:+.2f}% median per pair "
          f"[95% CI {lo * 100:+.2f}%, {hi * 100:+.2f}%], mean {ov['relative_overhead_mean'] * 100:+.2f}%, "
          f"fastest vs fastest {ov['relative_overhead_of_minima'] * 100:+.2f}%")
    lo, hi = ov["relative_cpu_overhead_ci95"]
    print(f"end-to-end CPU  : {ov['relative_cpu_overhead_median'] * 100:+.2f}% median per pair of process CPU "
          f"times [95% CI {lo * 100:+.2f}%, {hi * 100:+.2f}%]")
    print(f"hook alone      : {ov['hook_cost_per_step_us']:.1f} us/step = "
          f"{ov['hook_share_of_step'] * 100:.2f}% of a pipeline step")
    print(f"bit-identical   : {ov['bit_identical']}")
    results = {"config": config, "overhead": ov}
    if args.memory:
        rows = memory(args, device)
        print(f"\n# memory vs window ({args.mem_steps} steps of ({args.mem_batch}, 3, 64, 64) float32, "
              f"{rows[0]['sample_batch_mib']:.2f} MiB each)")
        print("| last_k | tracker state (MiB) | streaming peak RSS rise (MiB) | stored window + numpy.var (MiB) |")
        print("| --- | --- | --- | --- |")
        for r in rows:
            print(f"| {r['last_k']} | {r['state_mib']:.2f} | {r['streaming_peak_rss_mib']:.1f} | "
                  f"{r['stored_window_peak_rss_mib']:.1f} |")
        print(f"(peak RSS: {rows[0]['method']})")
        results["memory"] = rows
    write_json(args.out, results)
    print(f"\nresults: {args.out}")
    print("command: python -m benchmarks perf hallucfilter " + json.dumps(argv or []))
    return 0
