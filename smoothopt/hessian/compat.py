"""A drop-in replacement for ``pyhessian.hessian`` (PyHessian 0.1) built on :mod:`smoothopt.hessian`.

Switching is one import: ``from smoothopt.hessian import hessian``. Return types match PyHessian's;
the differences, all deliberate, are listed in the class docstring.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from smoothopt._validation import check_int, check_real
from smoothopt.hessian._flat import unflatten
from smoothopt.hessian.density import slq
from smoothopt.hessian.lanczos import lanczos
from smoothopt.hessian.operator import HessianOperator

__all__ = ["hessian"]

logger = logging.getLogger(__name__)


class hessian:  # noqa: N801 - the name PyHessian users import
    r"""Eigenvalues, trace and density of a model's loss Hessian with PyHessian's interface.

    Args:
        model: The network. Unlike PyHessian, it is not left in eval mode and no ``.grad`` is
            written: each pass runs in eval mode and restores the mode afterwards, so two objects
            built one after the other on the same model stay independent.
        criterion: ``criterion(model(inputs), targets)``, mean-reduced.
        data: One batch ``(inputs, targets)``; its gradient graph is built once and reused.
        dataloader: A re-iterable loader; forward and backward are recomputed per batch, batches
            are weighted by their exact sizes, and data changing between passes raises.
        cuda: Accepted for compatibility and otherwise ignored: the device follows the model's
            parameters (PyHessian's default ``cuda=True`` fails without a GPU).

    Raises:
        ValueError: Unless exactly one of ``data`` and ``dataloader`` is given.

    Note:
        Semantic differences from PyHessian:

        - :meth:`eigenvalues` returns the largest *algebraic* eigenvalues (PyHessian's power
          iteration finds the largest in magnitude, which can be the most negative one), from one
          Lanczos run with full re-orthogonalisation instead of deflated power iterations.
        - :meth:`trace` stops on the same relative-change rule but with :math:`|\bar t|` in the
          denominator, so a negative trace no longer stops it after two samples.
        - :meth:`density` runs all ``n_v`` probes in lock step (one data pass per step for all of
          them) without re-orthogonalisation, and returns fewer than ``iter`` nodes when Lanczos
          finds an invariant subspace early.
        - Parameters that the loss does not use get zero Hessian rows instead of an error.

    Example:
        >>> model = nn.Linear(3, 2)
        >>> h = hessian(model, nn.functional.cross_entropy, data=(torch.randn(8, 3), torch.arange(8) % 2))
        >>> eigenvalues, eigenvectors = h.eigenvalues(top_n=2)
        >>> len(eigenvalues), len(eigenvectors[0])
        (2, 2)
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: Callable[[Any, Tensor], Tensor],
        data: tuple[Any, Tensor] | None = None,
        dataloader: Iterable[tuple[Any, Tensor]] | None = None,
        cuda: bool | None = None,
    ) -> None:
        if (data is None) == (dataloader is None):
            raise ValueError("pass exactly one of data and dataloader")
        if cuda:
            logger.debug("hessian(cuda=True) ignored: the device follows the model's parameters")
        self.model = model
        self.criterion = criterion
        self.full_dataset = dataloader is not None
        source: Any = dataloader if dataloader is not None else data
        self.operator = HessianOperator(model, criterion, source, engine="recompute" if self.full_dataset else "graph")
        self.params = self.operator.params
        self.device = self.operator.device

    def eigenvalues(
        self, maxIter: int = 100, tol: float = 1e-3, top_n: int = 1  # noqa: N803 - PyHessian's names
    ) -> tuple[list[float], list[list[Tensor]]]:
        r"""Top ``top_n`` (largest algebraic) eigenvalues and their eigenvectors.

        Args:
            maxIter: Largest number of Lanczos steps (PyHessian: power iterations per eigenvalue);
                at least ``2 * top_n`` steps are taken.
            tol: Relative residual tolerance :math:`\|Hu - \lambda u\| \le` ``tol`` :math:`|\lambda_{max}|`.
            top_n: Number of eigenvalues.

        Returns:
            ``(eigenvalues, eigenvectors)``: a list of floats (descending) and, per eigenvalue, a list
            of tensors shaped like the parameters.
        """
        top_n = check_int("top_n", top_n, 1, self.operator.dim)
        max_steps = max(check_int("maxIter", maxIter, 1), min(2 * top_n, self.operator.dim))
        tol = check_real("tol", tol, 0.0)
        res = lanczos(self.operator, top_n, which="top", max_steps=max_steps, tol=tol, return_eigenvectors=True)
        assert res.top_vectors is not None  # noqa: S101 - requested above
        vectors = [[t.clone() for t in unflatten(u, self.params)] for u in res.top_vectors]
        return res.top.tolist(), vectors

    def trace(self, maxIter: int = 100, tol: float = 1e-3) -> list[float]:  # noqa: N803 - PyHessian's names
        r"""Hutchinson samples :math:`v^\top H v` (Rademacher ``v``) until the running mean settles.

        Args:
            maxIter: Largest number of probes.
            tol: Stop when the running mean changes by less than ``tol`` relative to its magnitude.

        Returns:
            The list of samples; their mean is the trace estimate.
        """
        max_iter = check_int("maxIter", maxIter, 1)
        tol = check_real("tol", tol, 0.0)
        samples: list[float] = []
        mean = 0.0
        for _ in range(max_iter):
            z = torch.randint(0, 2, (self.operator.dim,), device=self.device).to(self.operator.dtype) * 2 - 1
            samples.append(float((z * self.operator.matvec(z)).sum()))
            new_mean = sum(samples) / len(samples)
            if len(samples) > 1 and abs(new_mean - mean) / (abs(mean) + 1e-6) < tol:
                break
            mean = new_mean
        return samples

    def density(self, iter: int = 100, n_v: int = 1) -> tuple[list[list[float]], list[list[float]]]:  # noqa: A002
        """Stochastic Lanczos quadrature: nodes and weights of ``n_v`` probes of ``iter`` steps.

        Returns:
            ``(eigen_list_full, weight_list_full)``: per probe, the Ritz values and their weights.
        """
        iter_ = check_int("iter", iter, 1)
        n_v = check_int("n_v", n_v, 1)
        d = slq(self.operator, iter_, n_v)
        nodes, weights = [], []
        for r in range(n_v):
            live = d.weights[r] > 0
            nodes.append(d.nodes[r][live].tolist())
            weights.append(d.weights[r][live].tolist())
        return nodes, weights
