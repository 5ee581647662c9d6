r"""Stochastic trace estimators with a standard error: Hutchinson and Hutch++.

Hutchinson (1989): for Rademacher probes :math:`z` (entries +-1 with probability 1/2),
:math:`\mathbb{E}[z^\top H z] = \operatorname{tr}(H)`, so the mean of :math:`m` samples estimates
the trace with standard error :math:`s / \sqrt{m}`.

Hutch++ (Meyer, Musco, Musco and Woodruff, SOSA 2021, Algorithm 1): with a budget of :math:`m`
products, sketch :math:`Q = \operatorname{orth}(H S)` from :math:`m/3` probes, take
:math:`\operatorname{tr}(Q^\top H Q)` exactly and apply Hutchinson to the deflated
:math:`(I - QQ^\top) H (I - QQ^\top)` with the remaining :math:`m/3` probes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from smoothopt._validation import check_choice, check_int
from smoothopt.hessian._flat import make_generator, rademacher

__all__ = ["TraceEstimate", "hutchinson", "hutchpp", "trace"]


@dataclass
class TraceEstimate:
    r"""A trace estimate.

    Attributes:
        trace: The estimate of :math:`\\operatorname{tr}(H)`.
        stderr: Its standard error (from the spread of the stochastic part; ``nan`` with one sample).
        samples: The stochastic samples :math:`z^\top H z` (float64); for Hutch++ those of the
            deflated part, to which ``exact_part`` is added.
        num_matvecs: Operator products used.
        exact_part: The deterministic part (Hutch++ only, else 0).
    """

    trace: float
    stderr: float
    samples: Tensor
    num_matvecs: int
    exact_part: float = 0.0


def _mean_stderr(samples: Tensor) -> tuple[float, float]:
    m = samples.numel()
    mean = float(samples.mean())
    stderr = float(samples.std(unbiased=True) / math.sqrt(m)) if m > 1 else math.nan
    return mean, stderr


def _apply(operator: Any, z: Tensor, batch_size: int) -> Tensor:
    if isinstance(operator, Tensor):
        return z @ operator.T
    return torch.cat([operator.matvec(chunk) for chunk in z.split(batch_size)])


def _shape(operator: Any) -> tuple[int, torch.dtype, torch.device]:
    if isinstance(operator, Tensor):
        return operator.shape[0], operator.dtype, operator.device
    return operator.dim, operator.dtype, operator.device


def hutchinson(
    operator: Any,
    num_probes: int = 100,
    *,
    batch_size: int = 1,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> TraceEstimate:
    """Hutchinson's trace estimator with Rademacher probes, on a fixed budget of ``num_probes`` products.

    Args:
        operator: A Hessian operator (``dim``, ``dtype``, ``device``, ``matvec``) or a symmetric matrix.
        num_probes: Number of probes (and operator products); at least 1.
        batch_size: Probes applied per operator call (one data pass each).
        generator: Random generator for the probes.
        seed: Seed for a fresh CPU generator (alternative to ``generator``).

    Returns:
        A :class:`TraceEstimate`.

    Example:
        >>> est = hutchinson(torch.eye(5, dtype=torch.float64), 10, seed=0)
        >>> est.trace, est.stderr
        (5.0, 0.0)
    """
    num_probes = check_int("num_probes", num_probes, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    n, dtype, device = _shape(operator)
    gen = make_generator(generator, seed)

    # Step 1: z^T H z for Rademacher z, drawn batch by batch to keep memory at batch_size * n.
    parts = []
    for start in range(0, num_probes, batch_size):
        z = rademacher((min(batch_size, num_probes - start), n), generator=gen, dtype=dtype, device=device)
        parts.append((z * _apply(operator, z, batch_size)).sum(dim=1).to(torch.float64).cpu())
    samples = torch.cat(parts)

    # Step 2: mean and standard error.
    mean, stderr = _mean_stderr(samples)
    return TraceEstimate(trace=mean, stderr=stderr, samples=samples, num_matvecs=num_probes)


def hutchpp(
    operator: Any,
    num_probes: int = 99,
    *,
    batch_size: int = 1,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> TraceEstimate:
    """Hutch++ trace estimator (Meyer et al. 2021, Alg. 1) on a budget of ``num_probes`` products.

    Args:
        operator: A Hessian operator or a symmetric matrix.
        num_probes: Total operator products; at least 3 (one third sketch, one third exact
            projection, one third Hutchinson on the deflated remainder).
        batch_size: Probes applied per operator call.
        generator: Random generator for the probes.
        seed: Seed for a fresh CPU generator.

    Returns:
        A :class:`TraceEstimate` whose ``stderr`` comes from the deflated Hutchinson samples.
    """
    num_probes = check_int("num_probes", num_probes, 3)
    batch_size = check_int("batch_size", batch_size, 1)
    n, dtype, device = _shape(operator)
    gen = make_generator(generator, seed)
    s = min(num_probes // 3, n)
    g = num_probes - 2 * s

    # Step 1: sketch Q = orth(H S) with s Rademacher probes.
    sketch = rademacher((s, n), generator=gen, dtype=dtype, device=device)
    q = torch.linalg.qr(_apply(operator, sketch, batch_size).T.to(torch.float64)).Q.to(dtype)  # (n, s)

    # Step 2: exact part tr(Q^T H Q).
    exact = float((q.T * _apply(operator, q.T.contiguous(), batch_size)).sum().to(torch.float64))

    # Step 3: Hutchinson on (I - QQ^T) H (I - QQ^T).
    z = rademacher((g, n), generator=gen, dtype=dtype, device=device)
    z = z - (z @ q) @ q.T
    samples = (z * _apply(operator, z, batch_size)).sum(dim=1).to(torch.float64).cpu()
    mean, stderr = _mean_stderr(samples)
    return TraceEstimate(trace=exact + mean, stderr=stderr, samples=samples, num_matvecs=2 * s + g,
                         exact_part=exact)


def trace(
    operator: Any,
    num_probes: int = 100,
    *,
    method: Literal["hutchinson", "hutchpp"] = "hutchinson",
    batch_size: int = 1,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> TraceEstimate:
    r"""Estimate :math:`\operatorname{tr}(H)` with :func:`hutchinson` or :func:`hutchpp`."""
    check_choice("method", method, ("hutchinson", "hutchpp"))
    fn = hutchinson if method == "hutchinson" else hutchpp
    return fn(operator, num_probes, batch_size=batch_size, generator=generator, seed=seed)
