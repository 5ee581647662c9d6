r"""Lanczos iteration with full re-orthogonalisation for extreme eigenvalues of a Hessian operator.

Notation (Golub and Van Loan, *Matrix Computations*, Sec. 10.1): from a unit start vector
:math:`q_1`, the three-term recurrence

.. math::
    \beta_j q_{j+1} = H q_j - \alpha_j q_j - \beta_{j-1} q_{j-1}, \qquad \alpha_j = q_j^\top H q_j,

builds an orthonormal basis :math:`Q_m` of the Krylov space and the tridiagonal
:math:`T_m = Q_m^\top H Q_m`. The eigenpairs :math:`(\theta_i, s_i)` of :math:`T_m` give Ritz pairs
:math:`(\theta_i, Q_m s_i)` with residual :math:`\|H Q_m s_i - \theta_i Q_m s_i\| = \beta_m |s_{m,i}|`.

Several chains run in lock step: each step applies the operator once to a batch of vectors, so the
products of all chains (several probes, several classes) share one pass over the data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from smoothopt._validation import check_choice, check_int, check_real
from smoothopt.hessian._flat import gaussian, make_generator

__all__ = ["EigenResult", "LanczosChains", "lanczos"]

logger = logging.getLogger(__name__)

_DGKS = 0.5**0.5


class LanczosChains:
    r"""Lanczos recurrences for a batch of start vectors, advanced one operator product at a time.

    Args:
        start: Start vectors, shape ``(B, n)``; each is normalised.
        reorthogonalize: Keep the basis and orthogonalise every new vector against it twice
            (classical Gram-Schmidt, twice is enough). Costs ``B * steps * n`` memory; without it
            only three vectors per chain are kept and converged Ritz values may repeat.
        breakdown_tol: A chain stops when :math:`\beta_j \le` ``breakdown_tol`` times the largest
            :math:`|\alpha|` or :math:`\beta` seen so far (an invariant subspace was found).

    The recurrence scalars and :math:`T` are kept in float64 whatever the vectors' dtype.
    """

    def __init__(self, start: Tensor, *, reorthogonalize: bool = True, breakdown_tol: float = 1e-10) -> None:
        if start.dim() != 2:
            raise ValueError(f"start must have shape (B, n), got {tuple(start.shape)}")
        self.reorthogonalize = reorthogonalize
        self.breakdown_tol = breakdown_tol
        self.batch, self.dim = start.shape
        norms = start.norm(dim=1, keepdim=True)
        if (norms == 0).any():
            raise ValueError("start vectors must be non-zero")
        self.q = start / norms
        self.q_prev = torch.zeros_like(self.q)
        # The basis lives in one preallocated (capacity, B, n) buffer that doubles when full, so the
        # first j vectors are a contiguous slice.
        self._basis = self.q.new_zeros(min(16, self.dim + 1), self.batch, self.dim) if reorthogonalize else None
        self._size = 0
        if reorthogonalize:
            self._append(self.q)
        self.alphas: list[Tensor] = []
        self.betas: list[Tensor] = []
        self.lengths = torch.zeros(self.batch, dtype=torch.long)
        self.active = torch.ones(self.batch, dtype=torch.bool)
        self._scale = torch.zeros(self.batch, dtype=torch.float64)

    @property
    def done(self) -> bool:
        """Whether every chain has broken down (found an invariant subspace) or reached ``dim`` steps."""
        return not bool(self.active.any())

    def vectors(self) -> Tensor:
        """The vectors :math:`q_j` whose products the next :meth:`update` needs, shape ``(B, n)``."""
        return self.q

    def update(self, hq: Tensor) -> None:
        """Advance every active chain by one step given ``hq`` = :math:`H q_j` (shape ``(B, n)``)."""
        # Step 1: alpha_j = q_j^T H q_j and the three-term recurrence (out of place: hq is left alone).
        alpha = torch.einsum("bn,bn->b", hq, self.q).to(torch.float64)
        beta_prev = self.betas[-1] if self.betas else torch.zeros(self.batch, dtype=torch.float64)
        w = torch.addcmul(hq, self.q, -alpha.to(device=hq.device, dtype=hq.dtype)[:, None])
        w.addcmul_(self.q_prev, -beta_prev.to(device=hq.device, dtype=hq.dtype)[:, None])

        # Step 2: full re-orthogonalisation against Q_j by classical Gram-Schmidt, repeated only when
        # the first pass removed much of w (the DGKS test: a norm drop below 1/sqrt(2)); otherwise one
        # pass already leaves w orthogonal to working precision ("twice is enough").
        norm = w.norm(dim=1)
        if self._basis is not None:
            basis = self._basis[: self._size]  # (j, B, n)
            for _ in range(2):
                w.sub_(torch.einsum("jbn,jb->bn", basis, torch.einsum("jbn,bn->jb", basis, w)))
                before, norm = norm, w.norm(dim=1)
                if bool((norm > _DGKS * before).all()):
                    break

        # Step 3: beta_j = ||w|| with a relative breakdown test; stopped chains keep zero vectors.
        beta = norm.to(torch.float64)
        alpha = torch.where(self.active, alpha, torch.zeros_like(alpha))
        self._scale = torch.maximum(self._scale, torch.maximum(alpha.abs(), beta))
        self.alphas.append(alpha)
        self.lengths += self.active.long()
        broke = self.active & (beta <= self.breakdown_tol * self._scale)
        full = self.lengths >= self.dim
        beta = torch.where(self.active & ~broke, beta, torch.zeros_like(beta))
        self.betas.append(beta)
        self.active = self.active & ~broke & ~full
        safe = torch.where(beta > 0, beta, torch.ones_like(beta)).to(device=w.device, dtype=w.dtype)
        q_next = w.div_(safe[:, None])
        if not bool(self.active.all()):
            q_next[~self.active.to(w.device)] = 0
        self.q_prev, self.q = self.q, q_next
        if self.reorthogonalize:
            self._append(q_next)

    @property
    def basis(self) -> Tensor:
        """The stored Lanczos vectors :math:`Q_j`, shape ``(B, j, n)`` (empty without re-orthogonalisation)."""
        if self._basis is None:
            return self.q.new_zeros(self.batch, 0, self.dim)
        return self._basis[: self._size].transpose(0, 1)

    def _append(self, q: Tensor) -> None:
        assert self._basis is not None  # noqa: S101 - only called with re-orthogonalisation
        if self._size == self._basis.shape[0]:
            grown = self._basis.new_zeros(2 * self._size, self.batch, self.dim)
            grown[: self._size] = self._basis
            self._basis = grown
        self._basis[self._size] = q
        self._size += 1

    def tridiagonal(self, b: int) -> Tensor:
        """The float64 tridiagonal :math:`T` of chain ``b``, of size equal to that chain's length."""
        m = int(self.lengths[b])
        a = torch.stack([x[b] for x in self.alphas[:m]]) if m else torch.zeros(0, dtype=torch.float64)
        off = torch.stack([x[b] for x in self.betas[: m - 1]]) if m > 1 else torch.zeros(0, dtype=torch.float64)
        return torch.diag(a) + torch.diag(off, 1) + torch.diag(off, -1)

    def ritz(self, b: int) -> tuple[Tensor, Tensor, Tensor]:
        """Ritz values (ascending), eigenvectors of :math:`T` and residual norms of chain ``b``.

        Returns:
            ``(theta, S, residual)`` with ``residual_i = beta_m |S[m-1, i]|`` (Eq. in the module docstring).
        """
        t = self.tridiagonal(b)
        theta, s = torch.linalg.eigh(t)
        m = t.shape[0]
        last_beta = self.betas[m - 1][b] if m else torch.zeros((), dtype=torch.float64)
        residual = (last_beta * s[-1, :]).abs() if m else torch.zeros(0, dtype=torch.float64)
        return theta, s, residual

    def ritz_vectors(self, b: int, s: Tensor) -> Tensor:
        """Map eigenvectors ``s`` of :math:`T` (columns) to Ritz vectors :math:`Q s` (rows, shape ``(k, n)``)."""
        if self._basis is None:
            raise RuntimeError("Ritz vectors need the basis: run with reorthogonalize=True")
        m = s.shape[0]
        q = self._basis[:m, b]  # (m, n)
        return s.T.to(q.dtype) @ q


@dataclass
class EigenResult:
    r"""Extreme eigenvalues found by :func:`lanczos`.

    Attributes:
        top: The ``k`` largest (algebraic) eigenvalues, descending, float64.
        bottom: The ``k`` smallest eigenvalues, ascending, float64.
        top_residuals: Residual norms :math:`\|Hu - \lambda u\|` of ``top``.
        bottom_residuals: Residual norms of ``bottom``.
        converged: Whether every requested residual fell below ``tol`` times the spectral scale.
        num_steps: Lanczos steps (operator products per chain) used.
        top_vectors: Unit eigenvectors of ``top`` as rows ``(k, n)``, if requested.
        bottom_vectors: Unit eigenvectors of ``bottom``, if requested.
    """

    top: Tensor
    bottom: Tensor
    top_residuals: Tensor
    bottom_residuals: Tensor
    converged: bool
    num_steps: int
    top_vectors: Tensor | None = None
    bottom_vectors: Tensor | None = None


def _matvec_fn(operator: Any) -> Callable[[Tensor], Tensor]:
    if isinstance(operator, Tensor):
        from smoothopt.hessian.operator import MatrixOperator

        operator = MatrixOperator(operator)
    if getattr(operator, "num_groups", 1) != 1:
        raise ValueError("lanczos needs a single-group operator; use per_class_spectra for grouped ones")
    return operator.matvec


def lanczos(
    operator: Any,
    k: int = 1,
    *,
    which: Literal["top", "bottom", "both"] = "both",
    max_steps: int = 100,
    tol: float = 1e-6,
    return_eigenvectors: bool = False,
    start: Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    breakdown_tol: float = 1e-10,
) -> EigenResult:
    r"""Largest and smallest (algebraic) eigenvalues by Lanczos with full re-orthogonalisation.

    Args:
        operator: A :class:`~smoothopt.hessian.HessianOperator`, any object with ``dim``, ``dtype``,
            ``device`` and ``matvec``, or a symmetric matrix.
        k: How many eigenvalues at each requested end.
        which: ``"top"``, ``"bottom"`` or ``"both"``; convergence is judged on the requested ends.
        max_steps: Largest number of Lanczos steps (operator products); capped at the dimension.
        tol: Stop when every requested Ritz pair has residual at most ``tol`` times
            :math:`\max_i |\theta_i|` (checked every step once ``2k`` steps are done).
        return_eigenvectors: Also return the Ritz vectors.
        start: Start vector ``(n,)``; default a standard normal draw from ``generator``/``seed``.
        generator: Random generator for the start vector.
        seed: Seed for a fresh CPU generator (alternative to ``generator``).
        breakdown_tol: Relative breakdown tolerance, see :class:`LanczosChains`.

    Returns:
        An :class:`EigenResult`; ``converged`` is ``False`` when ``max_steps`` ran out first.

    Raises:
        ValueError: If ``k`` or ``max_steps`` is out of range.

    Example:
        >>> res = lanczos(torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64)), k=2, seed=0)
        >>> res.top.round(decimals=6).tolist(), res.bottom.round(decimals=6).tolist()
        ([10.0, 9.0], [1.0, 2.0])
    """
    check_choice("which", which, ("top", "bottom", "both"))
    matvec = _matvec_fn(operator)
    if isinstance(operator, Tensor):
        dim, dtype, device = operator.shape[0], operator.dtype, operator.device
    else:
        dim, dtype, device = operator.dim, operator.dtype, operator.device
    k = check_int("k", k, 1, dim)
    max_steps = min(check_int("max_steps", max_steps, 1), dim)
    tol = check_real("tol", tol, 0.0)
    gen = make_generator(generator, seed)
    v0 = gaussian((1, dim), generator=gen, dtype=dtype, device=device) if start is None else start.reshape(1, dim)
    chains = LanczosChains(v0.to(device=device, dtype=dtype), reorthogonalize=True, breakdown_tol=breakdown_tol)

    # Step 1: iterate until the requested Ritz pairs converge, the chain breaks down or steps run out.
    converged = False
    for step in range(1, max_steps + 1):
        chains.update(matvec(chains.vectors()))
        if chains.done:
            converged = True
            break
        if step >= min(2 * k, dim) and _requested_converged(chains, k, which, tol):
            converged = True
            break

    # Step 2: Ritz pairs at both ends of T_m.
    theta, s, residual = chains.ritz(0)
    kk = min(k, theta.numel())
    top_idx = torch.arange(theta.numel() - 1, theta.numel() - 1 - kk, -1)
    bottom_idx = torch.arange(kk)
    result = EigenResult(
        top=theta[top_idx], bottom=theta[bottom_idx], top_residuals=residual[top_idx],
        bottom_residuals=residual[bottom_idx], converged=converged, num_steps=int(chains.lengths[0]),
    )
    if return_eigenvectors:
        result.top_vectors = chains.ritz_vectors(0, s[:, top_idx])
        result.bottom_vectors = chains.ritz_vectors(0, s[:, bottom_idx])
    if not converged:
        logger.warning("lanczos did not converge in %d steps (tol=%g)", max_steps, tol)
    return result


def _requested_converged(chains: LanczosChains, k: int, which: str, tol: float, b: int = 0) -> bool:
    theta, _, residual = chains.ritz(b)
    scale = theta.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
    ok = residual <= tol * scale
    kk = min(k, theta.numel())
    top_ok = bool(ok[-kk:].all())
    bottom_ok = bool(ok[:kk].all())
    return {"top": top_ok, "bottom": bottom_ok, "both": top_ok and bottom_ok}[which]
