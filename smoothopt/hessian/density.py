r"""Spectral density by stochastic Lanczos quadrature (SLQ), several probes batched.

Ubaru, Chen and Saad (SIAM J. Matrix Anal. Appl. 2017), and Ghorbani, Krishnan and Xiao (ICML 2019)
for neural networks: for a unit probe :math:`v` and :math:`m` Lanczos steps with
:math:`T_m = S \Theta S^\top`,

.. math::
    v^\top f(H) v \approx \sum_{i=1}^{m} \tau_i f(\theta_i), \qquad \tau_i = S_{1i}^2,

exact for polynomials :math:`f` of degree below :math:`2m` (Gauss quadrature). Averaging over probes
gives the spectral measure :math:`\phi(t) = \frac{1}{n}\sum_j \delta(t - \lambda_j)` as nodes
:math:`\theta_i` with weights :math:`\tau_i / n_v`; a Gaussian of width :math:`\sigma` smooths it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from smoothopt._validation import check_choice, check_int, check_real
from smoothopt.hessian._flat import gaussian, make_generator, rademacher
from smoothopt.hessian.lanczos import LanczosChains

__all__ = ["SpectralDensity", "density_from_chains", "slq"]


@dataclass
class SpectralDensity:
    r"""Nodes and weights of a stochastic Lanczos quadrature, one row per probe.

    Attributes:
        nodes: Ritz values :math:`\theta_i`, float64, shape ``(num_probes, m)`` (padded with 0).
        weights: Quadrature weights :math:`\tau_i`, float64, same shape (padding has weight 0); each
            row sums to 1.
        dim: Dimension :math:`n` of the operator (number of parameters).
    """

    nodes: Tensor
    weights: Tensor
    dim: int

    @property
    def num_probes(self) -> int:
        """Number of probes."""
        return self.nodes.shape[0]

    def moment(self, p: int) -> float:
        r"""Estimate of :math:`\frac{1}{n}\operatorname{tr}(H^p)`, the ``p``-th moment of the spectrum."""
        p = check_int("p", p, 0)
        return float((self.weights * self.nodes.pow(p)).sum(dim=1).mean())

    def probe_moments(self, p: int) -> Tensor:
        r"""Per-probe quadrature :math:`\sum_i \tau_i \theta_i^p \approx v^\top H^p v` (unit ``v``)."""
        return (self.weights * self.nodes.pow(p)).sum(dim=1)

    def trace(self) -> tuple[float, float]:
        r"""Trace estimate :math:`n \\cdot` first moment and its standard error over probes."""
        samples = self.dim * self.probe_moments(1)
        stderr = float(samples.std(unbiased=True) / math.sqrt(samples.numel())) if samples.numel() > 1 else math.nan
        return float(samples.mean()), stderr

    @property
    def spectral_range(self) -> tuple[float, float]:
        """Smallest and largest node with positive weight."""
        live = self.nodes[self.weights > 0]
        return float(live.min()), float(live.max())

    def negative_mass(self, rtol: float = 1e-3) -> float:
        r"""Fraction of the spectrum below :math:`-\text{rtol} \cdot \max_i |\theta_i|`.

        The relative threshold keeps round-off around the (often huge) null space out of the count.
        """
        rtol = check_real("rtol", rtol, 0.0)
        scale = self.nodes[self.weights > 0].abs().max()
        mask = self.nodes < -rtol * scale
        return float((self.weights * mask).sum(dim=1).mean())

    def smooth(
        self, num_points: int = 1000, width: float = 0.01, grid: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        r"""Gaussian-smoothed density, :math:`\frac{1}{n_v}\sum_{v,i} \tau_i \mathcal N(t; \theta_i, \sigma^2)`.

        Args:
            num_points: Grid size when ``grid`` is not given.
            width: :math:`\sigma` as a fraction of the spectral range :math:`\theta_{max} - \theta_{min}`.
            grid: Points at which to evaluate; default ``num_points`` points over the range padded
                by ``5 sigma`` on both sides.

        Returns:
            ``(grid, density)``, float64; the density integrates to about 1.
        """
        check_int("num_points", num_points, 2)
        width = check_real("width", width, 0.0, low_open=True)
        lo, hi = self.spectral_range
        sigma = width * max(hi - lo, abs(hi), abs(lo), torch.finfo(torch.float64).tiny)
        if grid is None:
            grid = torch.linspace(lo - 5 * sigma, hi + 5 * sigma, num_points, dtype=torch.float64)
        grid = grid.to(torch.float64)
        diff = grid[:, None, None] - self.nodes[None]
        kernel = torch.exp(-0.5 * (diff / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        return grid, (kernel * self.weights[None]).sum(dim=(1, 2)) / self.num_probes


def density_from_chains(chains: LanczosChains, rows: range | list[int], dim: int) -> SpectralDensity:
    """Collect the Gauss quadrature of the given chains into a :class:`SpectralDensity`."""
    rows = list(rows)
    m = int(chains.lengths[rows].max()) if rows else 0
    nodes = torch.zeros(len(rows), m, dtype=torch.float64)
    weights = torch.zeros(len(rows), m, dtype=torch.float64)
    for r, b in enumerate(rows):
        theta, s, _ = chains.ritz(b)
        nodes[r, : theta.numel()] = theta
        weights[r, : theta.numel()] = s[0, :] ** 2
    return SpectralDensity(nodes=nodes, weights=weights, dim=dim)


def slq(
    operator: Any,
    num_steps: int = 100,
    num_probes: int = 4,
    *,
    probe: Literal["rademacher", "gaussian"] = "rademacher",
    reorthogonalize: bool = False,
    start: Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    breakdown_tol: float = 1e-10,
) -> SpectralDensity:
    """Spectral density by stochastic Lanczos quadrature with ``num_probes`` probes in lock step.

    Args:
        operator: A Hessian operator (``dim``, ``dtype``, ``device``, ``matvec``) or a symmetric matrix.
        num_steps: Lanczos steps per probe (each step is one pass with all probes at once).
        num_probes: Number of independent probes.
        probe: Distribution of the start vectors (normalised afterwards).
        reorthogonalize: Full re-orthogonalisation (memory ``num_probes * num_steps * n``). Without it
            converged Ritz values may appear more than once, sharing the weight of one eigenvalue,
            which leaves the quadrature's moments and the smoothed density intact.
        start: Probes of shape ``(num_probes, n)`` to use instead of drawing them (normalised here).
        generator: Random generator for the probes.
        seed: Seed for a fresh CPU generator.
        breakdown_tol: Relative breakdown tolerance, see :class:`~smoothopt.hessian.lanczos.LanczosChains`.

    Returns:
        A :class:`SpectralDensity`.

    Example:
        >>> d = slq(torch.diag(torch.tensor([-1.0, 1.0, 2.0, 3.0], dtype=torch.float64)), 4, 2, seed=0)
        >>> round(d.moment(1), 6), round(d.negative_mass(), 6) > 0
        (1.25, True)
    """
    check_choice("probe", probe, ("rademacher", "gaussian"))
    num_probes = check_int("num_probes", num_probes, 1)
    if isinstance(operator, Tensor):
        from smoothopt.hessian.operator import MatrixOperator

        operator = MatrixOperator(operator)
    n, dtype, device = operator.dim, operator.dtype, operator.device
    num_steps = min(check_int("num_steps", num_steps, 1), n)
    gen = make_generator(generator, seed)
    draw = rademacher if probe == "rademacher" else gaussian
    if start is None:
        start = draw((num_probes, n), generator=gen, dtype=dtype, device=device)
    elif start.shape != (num_probes, n):
        raise ValueError(f"start must have shape ({num_probes}, {n}), got {tuple(start.shape)}")
    else:
        start = start.to(device=device, dtype=dtype)

    # Step 1: num_probes Lanczos chains in lock step, one batched product per step.
    chains = LanczosChains(start, reorthogonalize=reorthogonalize, breakdown_tol=breakdown_tol)
    for _ in range(num_steps):
        chains.update(operator.matvec(chains.vectors()))
        if chains.done:
            break

    # Step 2: Gauss quadrature nodes theta_i and weights tau_i = S_1i^2 per probe.
    return density_from_chains(chains, range(num_probes), n)
