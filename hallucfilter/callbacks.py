"""Callback adapters: diffusers ``callback_on_step_end`` and k-diffusion's per-step ``callback(dict)``.

:class:`KDiffusionCallback` needs nothing beyond torch. :func:`trajectory_variance_callback` builds a
``diffusers.callbacks.PipelineCallback`` (so it composes with ``MultiPipelineCallbacks``); diffusers is
imported only when it is called.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from hallucfilter.diffusers_hook import TrajectoryRecorder, attach
from hallucfilter.variance import Reduction, TrajectoryVariance

__all__ = ["KDiffusionCallback", "trajectory_variance_callback"]


class KDiffusionCallback:
    """Feed a :class:`~hallucfilter.TrajectoryVariance` from a k-diffusion style sampler callback.

    k-diffusion samplers call ``callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": ...,
    "denoised": denoised})`` once per step, ``denoised`` being ``x0_hat`` at that step.

    Args:
        last_k: Window by position: the last ``last_k`` of ``num_steps`` steps.
        num_steps: Number of sampler steps (``len(sigmas) - 1``); required by a ``last_k`` window.
        sigma_below: Window by noise level instead: steps whose ``sigma`` is ``< sigma_below``.
        dtype: Accumulation dtype.

    Raises:
        ValueError: If a ``last_k`` window is given without ``num_steps``, or is longer than it.

    Example:
        >>> cb = KDiffusionCallback(last_k=2, num_steps=3)
        >>> for i, d in enumerate([0.0, 1.0, 3.0]):
        ...     cb({"x": None, "i": i, "sigma": 1.0, "denoised": torch.tensor([[d]])})
        >>> cb.scores()
        tensor([1.])
    """

    def __init__(self, last_k: int | None = 10, *, num_steps: int | None = None, sigma_below: float | None = None,
                 dtype: torch.dtype | None = None) -> None:
        self.tracker = TrajectoryVariance(last_k, sigma_below=sigma_below, dtype=dtype)
        self.num_steps = num_steps
        if self.tracker.window.kind == "position":
            if num_steps is None:
                raise ValueError("a last_k window needs num_steps= (the number of sampler steps, len(sigmas) - 1)")
            self.tracker.window.check_schedule(num_steps)

    def __call__(self, info: dict[str, Any]) -> None:
        """Record ``info["denoised"]`` of step ``info["i"]`` (a new run starts when ``i == 0``)."""
        if not isinstance(info, dict) or "denoised" not in info or "i" not in info:
            raise TypeError("the k-diffusion callback expects a dict with keys 'i' and 'denoised'")
        if info["i"] == 0:
            self.tracker.reset()
        sigma = info.get("sigma")
        if self.tracker.window.kind == "sigma":
            sigma = float(sigma)  # type: ignore[arg-type]
        else:
            sigma = None
        self.tracker.update(info["denoised"], step=info["i"], num_steps=self.num_steps, sigma=sigma)

    def scores(self, reduction: Reduction = "mean", *, q: float = 0.99) -> torch.Tensor:
        """Per-sample scores of the last run (see :meth:`TrajectoryVariance.scores`)."""
        return self.tracker.scores(reduction, q=q)


@functools.cache
def _callback_class() -> type:
    from diffusers.callbacks import PipelineCallback

    class TrajectoryVarianceCallback(PipelineCallback):
        """A ``PipelineCallback`` that hooks ``pipeline.scheduler`` for the run it is called in.

        ``callback_on_step_end`` fires after a step, and sees no ``x0_hat``; so on its first call of a run
        (``step_index == 0``) this callback attaches :func:`hallucfilter.attach` to the pipeline's
        scheduler, which records every later step, and detaches at the run's last step. The first
        step of a run is therefore never recorded: use it with a window that excludes it (any
        ``last_k < num_inference_steps``), or call :func:`hallucfilter.attach` before the pipeline.
        """

        tensor_inputs: list[str] = []

        def __init__(self, last_k: int | None = 10, *, timestep_below: float | None = None,
                     sigma_below: float | None = None) -> None:
            super().__init__()
            self._last_k, self._timestep_below, self._sigma_below = last_k, timestep_below, sigma_below
            TrajectoryVariance(last_k, timestep_below=timestep_below, sigma_below=sigma_below)  # validate now
            self.recorder: TrajectoryRecorder | None = None

        def callback_fn(self, pipeline: Any, step_index: int, timestep: Any,
                        callback_kwargs: dict[str, Any]) -> dict[str, Any]:
            if step_index == 0:
                if self.recorder is not None:
                    self.recorder.detach()
                self.recorder = attach(pipeline.scheduler, self._last_k, timestep_below=self._timestep_below,
                                       sigma_below=self._sigma_below)
                if self.recorder.in_window(timestep):
                    self.recorder.detach()
                    raise ValueError(f"the window ({self.recorder.tracker.window}) covers the run's first step "
                                     f"(timestep {float(timestep)}), which a step-end callback cannot see; use a "
                                     "shorter window or call hallucfilter.attach() before the pipeline")
            elif self.recorder is None:
                raise RuntimeError("TrajectoryVarianceCallback joined a run after its first step")
            num_timesteps = getattr(pipeline, "num_timesteps", None)
            if num_timesteps is not None and step_index == num_timesteps - 1:
                self.recorder.detach()
            return callback_kwargs

        def scores(self, reduction: Reduction = "mean", *, q: float = 0.99) -> torch.Tensor:
            """Per-sample scores of the last pipeline run."""
            if self.recorder is None:
                raise RuntimeError("no pipeline run has called this callback yet")
            return self.recorder.scores(reduction, q=q)

        def detach(self) -> None:
            """Unhook the scheduler if a run was interrupted before its last step."""
            if self.recorder is not None:
                self.recorder.detach()

    return TrajectoryVarianceCallback


def trajectory_variance_callback(last_k: int | None = 10, *, timestep_below: float | None = None,
                                 sigma_below: float | None = None) -> Any:
    """A diffusers ``PipelineCallback`` recording the trajectory variance of the run it is passed to.

    Args:
        last_k: Window: the last ``last_k`` reverse steps (must exclude the first step; see Note).
        timestep_below: Window by timestep instead.
        sigma_below: Window by the scheduler's sigma instead.

    Returns:
        A ``TrajectoryVarianceCallback`` (a ``diffusers.callbacks.PipelineCallback``) with ``scores()``.

    Note:
        A step-end callback first runs after step 0, so it attaches the scheduler hook then; step 0 is
        never recorded.

    Example:
        >>> cb = trajectory_variance_callback(last_k=5)  # doctest: +SKIP
        >>> pipe(prompt, num_inference_steps=20, callback_on_step_end=cb)  # doctest: +SKIP
        >>> cb.scores()  # doctest: +SKIP
    """
    return _callback_class()(last_k, timestep_below=timestep_below, sigma_below=sigma_below)
