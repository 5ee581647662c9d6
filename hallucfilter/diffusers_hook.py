"""Record the trajectory variance inside any diffusers pipeline by wrapping its scheduler's ``step``.

Pipeline callbacks (``callback_on_step_end``) never see ``x0_hat``, and the DDPM and DDIM pipelines have
none at all; every pipeline, however, calls ``scheduler.step``. :func:`attach` replaces ``step`` and
``set_timesteps`` on the scheduler *instance* (not a proxy, so ``isinstance`` checks, ``save_pretrained``
and ``from_config`` keep working) with wrappers that keep the original signatures (pipelines read them
with ``inspect.signature`` to decide whether to pass ``generator`` and ``eta``). The wrappers only read
tensors: samples are bit-identical with and without the hook.

Where ``x0_hat`` comes from, per scheduler family (diffusers 0.42):

- DDPM, DDIM: ``pred_original_sample`` returned by ``step``; recomputed unclipped from
  ``alphas_cumprod[t]`` when ``clip_sample`` or ``thresholding`` is on (DDPM and DDIM clip by default).
- Euler, Euler-ancestral, Heun, KDPM2, LMS, EDM-Euler: ``pred_original_sample`` (recomputed in the
  sigma form if ``clip_sample`` is on); second-order schedulers record only the first-order evaluation
  of each step, so one ``x0_hat`` per noise level.
- DPM-Solver++ and UniPC: the data prediction they store in ``model_outputs[-1]`` (``dpmsolver++`` /
  ``sde-dpmsolver++`` algorithms, ``predict_x0=True``), else recomputed from the scheduler's
  ``alpha_t, sigma_t``.
- Flow-matching Euler: ``x0 = x - sigma * v``.

The window is placed by position in ``scheduler.timesteps`` (the last ``last_k`` of the
``num_inference_steps`` reverse steps), never by counting calls: img2img runs only the tail of the
schedule, and second-order schedulers call ``step`` twice per step.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Callable
from typing import Any

import torch

from hallucfilter.variance import Reduction, TrajectoryVariance
from hallucfilter.x0 import x0_from_flow, x0_from_sigma, x0_from_vp

__all__ = ["TrajectoryRecorder", "attach"]

logger = logging.getLogger(__name__)

X0Fn = Callable[[Any, torch.Tensor, Any, torch.Tensor, Any], torch.Tensor]

_DATA_PREDICTION_ALGORITHMS = ("dpmsolver++", "sde-dpmsolver++")


def _cfg(scheduler: Any, key: str, default: Any = None) -> Any:
    config = getattr(scheduler, "config", None)
    if config is None:
        return default
    return config.get(key, default) if hasattr(config, "get") else getattr(config, key, default)


class TrajectoryRecorder:
    """A :class:`~hallucfilter.TrajectoryVariance` fed by a diffusers scheduler; made by :func:`attach`.

    Args:
        scheduler: The scheduler instance to hook.
        tracker: The tracker that receives each step's ``x0_hat``.
        x0_fn: Optional ``x0_fn(scheduler, model_output, timestep, sample, step_output) -> x0_hat`` that
            replaces the built-in extraction.

    Note:
        The schedule is read on the host once per ``set_timesteps`` (and DDPM/DDIM locate the first
        timestep of a run once); no other host synchronisation happens until scores are asked for.
    """

    def __init__(self, scheduler: Any, tracker: TrajectoryVariance, x0_fn: X0Fn | None = None) -> None:
        if not callable(getattr(scheduler, "step", None)) or not callable(getattr(scheduler, "set_timesteps", None)):
            raise TypeError(f"scheduler must have step() and set_timesteps() methods, got {type(scheduler).__name__}")
        if x0_fn is not None and not callable(x0_fn):
            raise TypeError(f"x0_fn must be callable, got {type(x0_fn).__name__}")
        self.scheduler = scheduler
        self.tracker = tracker
        self.x0_fn = x0_fn
        self._second_order = hasattr(type(scheduler), "state_in_first_order")
        self._has_step_index = isinstance(getattr(type(scheduler), "step_index", None), property)
        self._timesteps: list[float] = []
        self._sigmas: list[float] | None = None
        self._num_steps = 0
        self._next_index: int | None = None
        self._saved: dict[str, tuple[bool, Any]] = {}
        self._wrappers: dict[str, Any] = {}
        self._install()
        if getattr(scheduler, "timesteps", None) is not None and getattr(scheduler, "num_inference_steps", None):
            self._read_schedule(check=False)  # a schedule left from an earlier run; the next one may differ

    # --- installation ------------------------------------------------------------------------------

    def _install(self) -> None:
        sched = self.scheduler
        for name in ("step", "set_timesteps"):
            self._saved[name] = (name in vars(sched), vars(sched).get(name))
        original_step = sched.step
        original_set = sched.set_timesteps
        params = list(inspect.signature(original_step).parameters)[:3]

        @functools.wraps(original_set)
        def set_timesteps(*args: Any, **kwargs: Any) -> Any:
            result = original_set(*args, **kwargs)
            self._read_schedule()
            return result

        @functools.wraps(original_step)
        def step(*args: Any, **kwargs: Any) -> Any:
            first_order = not self._second_order or bool(sched.state_in_first_order)
            output = original_step(*args, **kwargs)
            if first_order:
                model_output, timestep, sample = list(args[:3]) + [kwargs[p] for p in params[len(args):]]
                self._record(model_output, timestep, sample, output)
            return output

        sched.step = step
        sched.set_timesteps = set_timesteps
        self._wrappers = {"step": step, "set_timesteps": set_timesteps}

    def detach(self) -> None:
        """Restore the scheduler's ``step`` and ``set_timesteps`` exactly; recorded scores stay available.

        Raises:
            RuntimeError: If something wrapped the scheduler again after this recorder (detach that first).
        """
        sched = self.scheduler
        if not self._wrappers:
            return
        for name, wrapper in self._wrappers.items():
            if vars(sched).get(name) is not wrapper:
                raise RuntimeError(f"scheduler.{name} was replaced after attach(); detach the later hook first")
        for name, (had_own, previous) in self._saved.items():
            if had_own:
                setattr(sched, name, previous)
            else:
                delattr(sched, name)
        self._wrappers = {}

    @property
    def attached(self) -> bool:
        """Whether the hook is installed."""
        return bool(self._wrappers)

    def __enter__(self) -> TrajectoryRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    # --- the schedule ----------------------------------------------------------------------------------

    def _read_schedule(self, check: bool = True) -> None:
        # One host copy of the schedule per set_timesteps; a new schedule starts a new run.
        sched = self.scheduler
        self.tracker.reset()
        self._next_index = None
        self._timesteps = [float(t) for t in torch.as_tensor(sched.timesteps).tolist()]
        n_calls = len(self._timesteps)
        self._num_steps = (n_calls + 1) // 2 if self._second_order else n_calls
        sigmas = getattr(sched, "sigmas", None)
        if isinstance(sigmas, torch.Tensor) and sigmas.numel() >= n_calls:
            self._sigmas = sigmas.tolist()
        elif getattr(sched, "alphas_cumprod", None) is not None:
            ab = sched.alphas_cumprod.double()
            self._sigmas = [math.sqrt((1 - float(ab[int(t)])) / float(ab[int(t)])) for t in self._timesteps]
        else:
            self._sigmas = None
        if check and self.tracker.window.kind == "position":
            self.tracker.window.check_schedule(self._num_steps)

    @property
    def num_steps(self) -> int:
        """Number of reverse steps (noise levels) in the current schedule."""
        return self._num_steps

    def _call_index(self, timestep: Any) -> int:
        """Index of the current call in ``scheduler.timesteps``."""
        if self._has_step_index and self.scheduler.step_index is not None:
            return int(self.scheduler.step_index) - 1  # read after step(), which advanced it by one
        if self._next_index is None:  # DDPM / DDIM: locate the first timestep of this run once
            t = float(timestep)
            matches = [i for i, s in enumerate(self._timesteps) if s == t]
            if not matches:
                raise RuntimeError(f"timestep {t} is not in scheduler.timesteps; call set_timesteps() before sampling")
            self._next_index = matches[0]
        index = self._next_index
        self._next_index += 1
        return index

    def in_window(self, timestep: Any) -> bool:
        """Whether the step at ``timestep`` (its first occurrence in ``scheduler.timesteps``) is in the window.

        Raises:
            ValueError: If ``timestep`` is not in the current schedule.
        """
        t = float(timestep)
        if t not in self._timesteps:
            raise ValueError(f"timestep {t} is not in scheduler.timesteps {self._timesteps}")
        index = self._timesteps.index(t)
        position = (index + 1) // 2 if self._second_order else index
        sigma = self._sigmas[index] if self._sigmas is not None else None
        return self.tracker.in_window(step=position, num_steps=self._num_steps, timestep=t, sigma=sigma)

    # --- x0_hat ------------------------------------------------------------------------------------------

    def _x0_hat(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, output: Any,
                index: int) -> torch.Tensor:
        sched = self.scheduler
        if self.x0_fn is not None:
            return self.x0_fn(sched, model_output, timestep, sample, output)
        prediction = _cfg(sched, "prediction_type", "epsilon")
        clipped = bool(_cfg(sched, "clip_sample", False)) or bool(_cfg(sched, "thresholding", False))

        # 1. Multistep solvers keep the converted model output; it is x0_hat in data-prediction modes.
        if getattr(sched, "model_outputs", None) is not None and hasattr(sched, "convert_model_output"):
            data_mode = _cfg(sched, "algorithm_type") in _DATA_PREDICTION_ALGORITHMS or _cfg(sched, "predict_x0")
            if data_mode and not clipped and sched.model_outputs[-1] is not None:
                return sched.model_outputs[-1]
            alpha_t, sigma_t = sched._sigma_to_alpha_sigma_t(sched.sigmas[index])
            if prediction == "flow_prediction":
                return x0_from_flow(model_output, sample, sigma_t)
            return x0_from_vp(model_output, sample, float(alpha_t) ** 2, prediction)

        # 2. Flow matching returns no x0_hat: x0 = x - sigma v.
        if "FlowMatch" in type(sched).__name__:
            return x0_from_flow(model_output, sample, self._sigmas[index] if self._sigmas else sched.sigmas[index])

        # 3. Schedulers that return pred_original_sample; recompute it where they clip.
        own = getattr(output, "pred_original_sample", None)
        if own is None and isinstance(output, tuple) and len(output) > 1:
            own = output[1]
        if own is not None and not clipped:
            return own
        if model_output.shape[1] == 2 * sample.shape[1]:  # learned variance: the first half is the mean part
            model_output = model_output[:, : sample.shape[1]]
        if getattr(sched, "sigmas", None) is None and getattr(sched, "alphas_cumprod", None) is not None:
            alpha_bar = sched.alphas_cumprod[int(self._timesteps[index])]
            return x0_from_vp(model_output, sample, float(alpha_bar), prediction)
        if self._sigmas is not None:
            return x0_from_sigma(model_output, sample, self._sigmas[index], prediction)
        raise RuntimeError(f"cannot find x0_hat for {type(sched).__name__}; pass x0_fn= to attach()")

    @torch.no_grad()
    def _record(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, output: Any) -> None:
        index = self._call_index(timestep)
        position = index // 2 if self._second_order else index
        window = self.tracker.window
        if not window.contains(step=position, num_steps=self._num_steps, timestep=self._timesteps[index],
                               sigma=self._sigmas[index] if self._sigmas is not None else None):
            return
        x0_hat = self._x0_hat(model_output, timestep, sample, output, index)
        self.tracker.update(x0_hat, step=position, num_steps=self._num_steps, timestep=self._timesteps[index],
                            sigma=self._sigmas[index] if self._sigmas is not None else None)

    # --- results -------------------------------------------------------------------------------------------

    def scores(self, reduction: Reduction = "mean", *, q: float = 0.99) -> torch.Tensor:
        """Per-sample scores of the last sampling run (see :meth:`TrajectoryVariance.scores`)."""
        return self.tracker.scores(reduction, q=q)

    def variance_map(self) -> torch.Tensor:
        """Per-element variance of the last run (see :meth:`TrajectoryVariance.variance_map`)."""
        return self.tracker.variance_map()

    def reset(self) -> None:
        """Forget the recorded steps (``set_timesteps`` does this at the start of each run)."""
        self.tracker.reset()
        self._next_index = None

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        return f"{type(self).__name__}({type(self.scheduler).__name__}, {self.tracker!r}, {state})"


def attach(scheduler: Any, last_k: int | None = 10, *, timestep_below: float | None = None,
           sigma_below: float | None = None, x0_fn: X0Fn | None = None,
           dtype: torch.dtype | None = None) -> TrajectoryRecorder:
    """Hook a diffusers scheduler so that every sampling run records the trajectory variance of ``x0_hat``.

    Args:
        scheduler: A diffusers scheduler instance (``pipe.scheduler``); it is modified in place until
            :meth:`TrajectoryRecorder.detach`.
        last_k: Window: the last ``last_k`` reverse steps of the schedule (by position in
            ``scheduler.timesteps``, the output step included).
        timestep_below: Window by noise level instead: steps with timestep ``< timestep_below``.
        sigma_below: Window by noise level instead: steps with the scheduler's sigma ``< sigma_below``.
        x0_fn: Optional custom extraction ``x0_fn(scheduler, model_output, timestep, sample, step_output)``.
        dtype: Accumulation dtype (default: ``x0_hat``'s, at least float32).

    Returns:
        The recorder: ``rec.scores()`` after the pipeline call, ``rec.detach()`` to unhook.

    Raises:
        TypeError: If ``scheduler`` has no ``step`` / ``set_timesteps``.
        ValueError: If the window is invalid or longer than the current schedule.

    Note:
        The wrappers are instance attributes bound to this scheduler: ``copy.deepcopy`` of a hooked
        scheduler would share them with the original. Detach before copying (``save_pretrained`` and
        ``from_config`` only use the config and are unaffected).

    Example:
        >>> rec = hallucfilter.attach(pipe.scheduler, last_k=10)  # doctest: +SKIP
        >>> images = pipe(batch_size=8, num_inference_steps=50).images  # doctest: +SKIP
        >>> scores = rec.scores(); rec.detach()  # doctest: +SKIP
    """
    tracker = TrajectoryVariance(last_k, timestep_below=timestep_below, sigma_below=sigma_below, dtype=dtype)
    return TrajectoryRecorder(scheduler, tracker, x0_fn=x0_fn)
