r"""Hessian-vector products of a model's loss over a batch, a list of batches or a data loader.

The operator :math:`v \mapsto H v` with

.. math::
    H = \nabla^2_\theta \frac{1}{N} \sum_{i=1}^{N} \ell(f_\theta(x_i), y_i)
      = \sum_b \frac{n_b}{N} \nabla^2_\theta L_b(\theta),

where :math:`L_b` is the (mean-reduced) loss of batch :math:`b` with :math:`n_b` samples, so uneven
batches are weighted by their exact sample counts. With ``num_groups`` the samples are split by
their integer target into groups (classes) and the operator returns one product per group, each
normalised by that group's count: :math:`H_c v_c` for every class :math:`c` in one pass over the data.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from smoothopt._validation import check_choice, check_int
from smoothopt.hessian._flat import flatten, select_params, unflatten

__all__ = ["HessianOperator", "MatrixOperator"]

logger = logging.getLogger(__name__)

Batch = tuple[Any, Tensor]


class MatrixOperator:
    """A dense symmetric matrix behind the operator interface (tests and small problems).

    Args:
        matrix: Symmetric tensor of shape ``(n, n)``.

    Example:
        >>> op = MatrixOperator(torch.diag(torch.tensor([3.0, 1.0])))
        >>> op.matvec(torch.tensor([1.0, 1.0]))
        tensor([3., 1.])
    """

    num_groups = 1

    def __init__(self, matrix: Tensor) -> None:
        if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"matrix must be square, got shape {tuple(matrix.shape)}")
        self.matrix = matrix
        self.dim = matrix.shape[0]
        self.dtype = matrix.dtype
        self.device = matrix.device
        self.num_matvecs = 0

    def matvec(self, v: Tensor) -> Tensor:
        """Return ``matrix @ v`` for ``v`` of shape ``(n,)`` or ``(k, n)``."""
        self.num_matvecs += 1 if v.dim() == 1 else v.shape[0]
        return v @ self.matrix.T

    def matvec_grouped(self, v: Tensor) -> Tensor:
        """Products for ``v`` of shape ``(1, k, n)``; a matrix is a single group."""
        return self.matvec(v.reshape(-1, self.dim)).reshape(v.shape)


class HessianOperator:
    r"""Hessian of a model's mean loss over some data, applied to vectors without forming it.

    Args:
        model: The network; its mode, parameters, buffers and ``.grad`` are left as found.
        loss_fn: ``loss_fn(model(inputs), targets)`` returning the mean loss of a batch.
        data: One batch ``(inputs, targets)``, a list of such batches, or any re-iterable loader
            yielding them.
        params: Parameters to differentiate with respect to (default: all with ``requires_grad``).
            A parameter the loss does not use gets zero rows.
        engine: ``"graph"`` builds the gradient graph of every batch once and reuses it for every
            product (fast; memory grows with the data), ``"recompute"`` runs forward and backward
            per batch per pass (memory of one batch), ``"auto"`` picks ``"graph"`` for a single
            batch given as tensors and ``"recompute"`` otherwise.
        num_groups: If given, the integer targets in ``[0, num_groups)`` split the samples into
            groups and every product is per group (see :meth:`matvec_grouped`).
        mode: ``"eval"`` (default, as in Hessian analyses) or ``"train"`` mode during the passes;
            in train mode, buffers (BatchNorm statistics) are restored after every pass.
        check_data: Whether to fingerprint the data each pass and raise when it changes.
        vectorize: Apply several vectors through one batched backward (``is_grads_batched``)
            instead of a loop; faster on GPUs, often slower on one CPU thread.
        conv_shortcut: Back-propagate the share of convolutions whose input needs no gradient (the
            first layer) from their output gradient instead of through the convolution's double
            backward, which also computes an unused gradient for the input (same product, less work).
        distributed: All-reduce products and counts over the default process group; ``None``
            turns it on when ``torch.distributed`` is initialised with more than one process.

    Raises:
        TypeError: If ``data`` is not a batch, a list of batches or an iterable of batches.

    Note:
        ``loss_fn`` must reduce by the mean over the batch, as ``F.cross_entropy`` does by default.
        With class weights, a batch's mean loss is the weighted mean; the per-batch weighting used
        here is then the sample count, not the weight sum.

    Example:
        >>> model = nn.Linear(3, 2)
        >>> op = HessianOperator(model, nn.functional.cross_entropy, (torch.randn(8, 3), torch.randint(2, (8,))))
        >>> op.matvec(torch.randn(op.dim)).shape
        torch.Size([8])
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Tensor], Tensor],
        data: Batch | Sequence[Batch] | Iterable[Batch],
        *,
        params: Iterable[nn.Parameter] | None = None,
        engine: Literal["auto", "graph", "recompute"] = "auto",
        num_groups: int | None = None,
        mode: Literal["eval", "train"] = "eval",
        check_data: bool = True,
        vectorize: bool = False,
        conv_shortcut: bool = True,
        distributed: bool | None = None,
    ) -> None:
        check_choice("engine", engine, ("auto", "graph", "recompute"))
        check_choice("mode", mode, ("eval", "train"))
        if num_groups is not None:
            check_int("num_groups", num_groups, 1)
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        self.model = model
        self.loss_fn = loss_fn
        self.params = select_params(model, params)
        self.dim = sum(p.numel() for p in self.params)
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        self.num_groups = 1 if num_groups is None else num_groups
        self._split = num_groups is not None
        self.mode = mode
        self.check_data = check_data
        self.vectorize = vectorize
        self.conv_shortcut = conv_shortcut
        if distributed is None:
            distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.distributed = bool(distributed)
        self.num_passes = 0
        self.num_matvecs = 0
        self._fingerprint: Tensor | None = None

        single = _is_batch(data)
        if single:
            self._data: Any = [data]
        elif isinstance(data, (list, tuple)):
            if not all(_is_batch(b) for b in data):
                raise TypeError("data must be (inputs, targets), a list of such batches or a loader yielding them")
            self._data = list(data)
        elif isinstance(data, Iterable):
            self._data = data
        else:
            raise TypeError(f"data must be a batch, a list of batches or a loader, got {type(data).__name__}")
        if engine == "auto":
            engine = "graph" if single else "recompute"
        self.engine = engine
        self._graphs: list[tuple[_Grad, int, int]] | None = None
        self.counts = torch.zeros(self.num_groups, dtype=torch.float64)
        if engine == "graph":
            self._build_graphs()

    # ----------------------------------------------------------------- public
    @property
    def priors(self) -> Tensor:
        r"""Fraction of the samples in each group, :math:`\pi_c = n_c / N` (float64, shape ``(G,)``)."""
        if self.engine == "recompute" and self.num_passes == 0:
            self._pass([torch.zeros(0, self.dim, dtype=self.dtype, device=self.device)] * self.num_groups)
        return self.counts / self.counts.sum()

    def matvec(self, v: Tensor) -> Tensor:
        """Return :math:`H v` for ``v`` of shape ``(n,)`` or ``(k, n)`` (one group only).

        Raises:
            RuntimeError: If the operator has several groups; use :meth:`matvec_grouped`.
        """
        if self.num_groups != 1:
            raise RuntimeError("this operator has several groups; call matvec_grouped with shape (G, k, n)")
        out = self.matvec_grouped([v.reshape(-1, self.dim)])
        return out[0].reshape(v.shape)

    def matvec_grouped(self, v: Tensor | Sequence[Tensor]) -> Tensor | list[Tensor]:
        """Return :math:`H_c v_{c,j}` for every group ``c`` and vector ``j`` in one pass over the data.

        ``v`` is either one tensor of shape ``(G, k, n)`` (``G = num_groups``) or a sequence of ``G``
        tensors of shape ``(k_c, n)``, one per group, whose ``k_c`` may differ (an empty group costs
        nothing). The result has the same form, in the parameters' dtype and device. The sequence form
        avoids assembling a ``(G, k, n)`` block: with many groups and parameters, copying that block
        cost as much as a third of a per-class spectrum on one CPU thread.
        """
        if isinstance(v, Tensor):
            if v.dim() != 3 or v.shape[0] != self.num_groups or v.shape[2] != self.dim:
                raise ValueError(f"v must have shape ({self.num_groups}, k, {self.dim}), got {tuple(v.shape)}")
            return torch.stack(self.matvec_grouped(list(v.unbind(0))))
        vs = list(v)
        if len(vs) != self.num_groups:
            raise ValueError(f"v must hold one tensor per group ({self.num_groups}), got {len(vs)}")
        for g, block in enumerate(vs):
            if not isinstance(block, Tensor) or block.dim() != 2 or block.shape[1] != self.dim:
                shape = tuple(block.shape) if isinstance(block, Tensor) else type(block).__name__
                raise ValueError(f"v[{g}] must have shape (k, {self.dim}), got {shape}")
        vs = [block.to(device=self.device, dtype=self.dtype) for block in vs]
        self.num_matvecs += sum(block.shape[0] for block in vs)
        return self._pass(vs)

    def gradient(self) -> Tensor:
        """Flat gradient of the loss over all the data (one group only), shape ``(n,)``.

        With the ``"graph"`` engine the stored first-order graphs are reused; otherwise it is one
        extra pass. Nothing is written to ``.grad``.
        """
        if self.num_groups != 1:
            raise RuntimeError("gradient() needs a single-group operator")
        total = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        count = 0.0
        if self.engine == "graph":
            assert self._graphs is not None  # noqa: S101 - internal invariant
            for first, _, n_b in self._graphs:
                full: list[Tensor | None] = [None] * len(self.params)
                for g, i in zip(first.grads, first.idx):
                    full[i] = g.detach()
                total += n_b * flatten(full, self.params)
                count += n_b
        else:
            with self._model_state():
                for inputs, targets, _ in self._chunks(None):
                    with torch.enable_grad():
                        loss = self.loss_fn(self.model(inputs), targets)
                        grad = torch.autograd.grad(loss, self.params, allow_unused=True)
                    n_b = _batch_size(targets)
                    total += n_b * flatten(grad, self.params)
                    count += n_b
        if self.distributed:
            packed = torch.cat([total, total.new_tensor([count])])
            dist.all_reduce(packed)
            total, count = packed[:-1], float(packed[-1])
        return total / max(count, 1.0)

    # ---------------------------------------------------------------- private
    def _pass(self, vs: list[Tensor]) -> list[Tensor]:
        """One pass over the data: accumulate ``n_b * H_b v_g`` per group, then normalise (Eq. above)."""
        # NOTE: one (k_g, n) accumulator per group, written in place by _apply; fresh (G, k, n) blocks per
        # pass were slow on CPU (large allocations are page-faulted in anew every time).
        acc = [torch.zeros(block.shape, dtype=self.dtype, device=self.device) for block in vs]  # contiguous rows
        if self.engine == "graph":
            assert self._graphs is not None  # noqa: S101 - internal invariant
            for first, group, n_b in self._graphs:
                if vs[group].shape[0]:
                    self._apply(first, vs[group], acc[group], n_b, retain=True)
            counts = self.counts.clone()
        else:
            counts = torch.zeros(self.num_groups, dtype=torch.float64)
            fingerprint = torch.zeros(4, dtype=torch.float64)
            with self._model_state():
                for inputs, targets, group in self._chunks(fingerprint):
                    n_b = _batch_size(targets)
                    counts[group] += n_b
                    if vs[group].shape[0]:
                        first = self._gradient(inputs, targets)
                        self._apply(first, vs[group], acc[group], n_b, retain=False)
            self._check_fingerprint(fingerprint)
            if self.distributed:
                counts = counts.to(self.device)
                dist.all_reduce(counts)
                counts = counts.cpu()
            self.counts = counts
        if self.distributed and any(a.shape[0] for a in acc):
            packed = torch.cat(acc)
            dist.all_reduce(packed)
            acc = list(packed.split([a.shape[0] for a in acc]))
        self.num_passes += 1
        for a, count in zip(acc, counts.tolist()):
            a.mul_(1.0 / count if count > 0 else 0.0)
        return acc

    def _build_graphs(self) -> None:
        graphs = []
        counts = torch.zeros(self.num_groups, dtype=torch.float64)
        with self._model_state():
            for inputs, targets, group in self._chunks(None):
                first = self._gradient(inputs, targets)
                n_b = _batch_size(targets)
                counts[group] += n_b
                graphs.append((first, group, n_b))
        if self.distributed:
            counts = counts.to(self.device)
            dist.all_reduce(counts)
            counts = counts.cpu()
        self.counts = counts
        self._graphs = graphs

    def _chunks(self, fingerprint: Tensor | None) -> Iterator[tuple[Any, Tensor, int]]:
        for batch in self._data:
            if not _is_batch(batch):
                raise TypeError(f"each batch must be (inputs, targets), got {type(batch).__name__}")
            inputs, targets = batch
            if fingerprint is not None:
                fingerprint += _fingerprint(inputs, targets)
            inputs = _to(inputs, self.device)
            targets = targets.to(self.device)
            if not self._split:
                yield inputs, targets, 0
                continue
            if targets.dim() != 1 or targets.is_floating_point():
                raise TypeError("num_groups needs integer class targets of shape (batch,)")
            lo, hi = int(targets.min()), int(targets.max())
            if lo < 0 or hi >= self.num_groups:
                raise ValueError(f"targets must be in [0, {self.num_groups - 1}] for num_groups={self.num_groups}, "
                                 f"got values in [{lo}, {hi}]")
            for c in torch.unique(targets).tolist():
                mask = targets == c
                yield _index(inputs, mask), targets[mask], int(c)

    def _gradient(self, inputs: Any, targets: Tensor) -> _Grad:
        r"""First backward with ``create_graph``; keeps the gradients that depend on the parameters.

        Convolutions fed by data that needs no gradient (typically the first layer) are tapped: their
        output gradient :math:`\partial L / \partial z` is kept as well, for the shortcut in :meth:`_apply`.
        """
        taps: list[tuple[nn.Module, Tensor, Tensor]] = []
        seen: dict[nn.Module, int] = {}
        handles = []
        if self.conv_shortcut:
            position = {id(p): i for i, p in enumerate(self.params)}

            def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
                seen[module] = seen.get(module, 0) + 1
                if (len(args) == 1 and isinstance(args[0], Tensor) and not args[0].requires_grad
                        and isinstance(output, Tensor) and output.requires_grad):
                    taps.append((module, args[0], output))

            for m in self.model.modules():
                bias = getattr(m, "bias", None)
                if (isinstance(m, nn.modules.conv._ConvNd) and not isinstance(m, nn.modules.conv._ConvTransposeNd)
                        and id(m.weight) in position and (bias is None or id(bias) in position)):
                    handles.append(m.register_forward_hook(hook))
        try:
            with torch.enable_grad():
                loss = self.loss_fn(self.model(inputs), targets)
        finally:
            for h in handles:
                h.remove()
        if loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar (mean) loss, got shape {tuple(loss.shape)}")
        # A module called more than once accumulates several gradients: no shortcut for it.
        taps = [t for t in taps if seen[t[0]] == 1]
        with torch.enable_grad():
            out = torch.autograd.grad(loss, [*self.params, *(z for _, _, z in taps)], create_graph=True,
                                      allow_unused=True)
        grads = out[: len(self.params)]
        idx = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        kept = []
        for (module, x, _), g_z in zip(taps, out[len(self.params) :]):
            if g_z is not None and g_z.requires_grad:
                w = position[id(module.weight)]
                b = None if module.bias is None else position[id(module.bias)]
                kept.append(_Tap(module, x, g_z, w, b))
        return _Grad([grads[i] for i in idx], idx, kept)

    def _apply(self, first: _Grad, v: Tensor, out: Tensor, weight: float, *, retain: bool) -> None:
        r"""Second backward, ``out[j] += weight *`` :math:`H_b v_j`, :math:`H_b v = \nabla_\theta (g_b^\top v)`.

        For a tapped convolution :math:`z = W * x + b` with ``x`` free of parameters,
        :math:`g_W^\top v_W + g_b^\top v_b = \langle \partial L/\partial z, v_W * x + v_b \rangle`, so its
        share is back-propagated from :math:`\partial L / \partial z` with the cotangent
        :math:`v_W * x + v_b` instead of through the convolution's double backward.
        """
        # NOTE: the double backward of a convolution computes the gradient with respect to its input
        # whenever the weight has a tangent, even when the input needs none (torch's
        # _convolution_double_backward); on the first layer of a CNN that transposed convolution was about
        # a third of each product. The tap replaces it with one forward convolution per vector.
        k = v.shape[0]
        if not first.grads and not first.taps:
            return
        pieces = unflatten(v, self.params)
        skip = set()
        for t in first.taps:
            skip.add(t.weight)
            if t.bias is not None:
                skip.add(t.bias)
        pairs = [(g, i) for g, i in zip(first.grads, first.idx) if i not in skip]
        outputs_g = [g for g, _ in pairs] + [t.grad_output for t in first.taps]
        cotangents = [pieces[i] for _, i in pairs] + [_tap_cotangent(t, pieces) for t in first.taps]
        if self.vectorize and k > 1:
            hv = torch.autograd.grad(outputs_g, self.params, grad_outputs=cotangents, retain_graph=retain,
                                     allow_unused=True, is_grads_batched=True)
            if any(h is not None for h in hv):
                out.add_(flatten(hv, self.params), alpha=weight)
            return
        for j in range(k):
            hv = torch.autograd.grad(outputs_g, self.params, grad_outputs=[o[j] for o in cotangents],
                                     retain_graph=retain or j < k - 1, allow_unused=True)
            # Accumulate into views of row j of ``out`` (contiguous, so unflatten gives views): no flat
            # temporary, no concatenation.
            used = [(t, h) for t, h in zip(unflatten(out[j], self.params), hv) if h is not None]
            if used:
                torch._foreach_add_([t for t, _ in used], [h for _, h in used], alpha=weight)

    def _check_fingerprint(self, fingerprint: Tensor) -> None:
        if not self.check_data:
            return
        if self._fingerprint is None:
            self._fingerprint = fingerprint
            return
        if not torch.allclose(fingerprint, self._fingerprint, rtol=1e-9, atol=1e-12):
            raise RuntimeError(
                "the data changed between passes over the loader (sum of inputs "
                f"{self._fingerprint[1].item():.9g} -> {fingerprint[1].item():.9g}); the Hessian operator must be "
                "fixed: turn data augmentation off and do not drop a random last batch "
                "(or pass check_data=False if the change is intended)"
            )

    @contextlib.contextmanager
    def _model_state(self) -> Iterator[None]:
        """Put the model in the requested mode and restore modes (and, in train mode, buffers) afterwards."""
        modes = [(m, m.training) for m in self.model.modules()]
        buffers = [(b, b.detach().clone()) for b in self.model.buffers()] if self.mode == "train" else []
        self.model.train(self.mode == "train")
        try:
            yield
        finally:
            for m, training in modes:
                m.training = training
            # NOTE: through ``.data`` so that the version counters the retained graph checks stay put;
            # batch-norm backward in train mode uses its saved batch statistics, not these buffers.
            with torch.no_grad():
                for b, saved in buffers:
                    b.data.copy_(saved)


@dataclass
class _Tap:
    """A convolution whose input needs no gradient: its module, input and output gradient, param positions."""

    module: nn.Module
    inputs: Tensor
    grad_output: Tensor
    weight: int
    bias: int | None


@dataclass
class _Grad:
    """First-order gradients of one batch (those that depend on the parameters) and the tapped convolutions."""

    grads: list[Tensor]
    idx: list[int]
    taps: list[_Tap]


def _tap_cotangent(tap: _Tap, pieces: list[Tensor]) -> Tensor:
    r"""The convolution applied to its input with the tangent as parameters, :math:`v_W * x + v_b`, per vector."""
    conv = tap.module
    v_w = pieces[tap.weight]  # (k, *weight.shape)
    v_b = None if tap.bias is None else pieces[tap.bias]
    # NOTE: one convolution per vector, each of the module's own shape (the one the forward pass used).
    # Stacking the k tangents into one convolution with k * out_channels filters hit slow oneDNN kernels
    # for some shapes on one CPU thread (3 -> 2 x 32 channels on 128 x 3 x 32 x 32: 52.7 ms against
    # 11.7 ms for two single convolutions); on the benchmark CNN the two forms cost the same.
    with torch.no_grad():
        rows = [conv._conv_forward(tap.inputs, v_w[j], None if v_b is None else v_b[j])  # type: ignore[operator]
                for j in range(v_w.shape[0])]
    return torch.stack(rows)


def _is_batch(obj: Any) -> bool:
    return isinstance(obj, (tuple, list)) and len(obj) == 2 and isinstance(obj[1], Tensor) and (
        isinstance(obj[0], Tensor) or isinstance(obj[0], (tuple, list, dict))
    )


def _batch_size(targets: Tensor) -> int:
    return int(targets.shape[0]) if targets.dim() else 1


def _to(inputs: Any, device: torch.device) -> Any:
    if isinstance(inputs, Tensor):
        return inputs.to(device)
    if isinstance(inputs, dict):
        return {k: _to(v, device) for k, v in inputs.items()}
    return type(inputs)(_to(x, device) for x in inputs)


def _index(inputs: Any, mask: Tensor) -> Any:
    if isinstance(inputs, Tensor):
        return inputs[mask]
    if isinstance(inputs, dict):
        return {k: _index(v, mask) for k, v in inputs.items()}
    return type(inputs)(_index(x, mask) for x in inputs)


def _fingerprint(inputs: Any, targets: Tensor) -> Tensor:
    """Order-independent summary (count, sum, sum of squares, target sum) of a batch, in float64."""
    tensors = [inputs] if isinstance(inputs, Tensor) else list(inputs.values() if isinstance(inputs, dict) else inputs)
    out = torch.zeros(4, dtype=torch.float64)
    out[0] = _batch_size(targets)
    for t in tensors:
        if isinstance(t, Tensor) and t.is_floating_point():
            t64 = t.detach().to(torch.float64)
            out[1] += t64.sum().cpu()
            out[2] += t64.square().sum().cpu()
    out[3] = targets.detach().to(torch.float64).sum().cpu()
    return out
