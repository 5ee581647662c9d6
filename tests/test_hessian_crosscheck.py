"""smoothopt.hessian.hessian (the PyHessian-compatible front) against PyHessian 0.1 and the exact Hessian.

PyHessian is the reference where it is correct (top eigenvalue of a Hessian whose largest eigenvalue
is also the largest in magnitude; the trace); the exact values come from ``torch.func.hessian`` in
float64 in ``_exact`` below. PyHessian is called with ``cuda=False`` and gradients are cleared
between its objects, since each object leaves graph-carrying ``.grad`` behind.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from smoothopt.hessian import hessian

pyhessian = pytest.importorskip("pyhessian")


def _setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    return model, x, y


def _exact(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(theta):
        params, off = {}, 0
        for name, shape in zip(names, shapes):
            params[name] = theta[off : off + math.prod(shape)].view(shape)
            off += math.prod(shape)
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    return torch.func.hessian(loss)(flat)


@pytest.fixture(scope="module")
def problem():
    model, x, y = _setup()
    return model, x, y, torch.linalg.eigvalsh(_exact(model, x, y))


def test_return_shapes_match_pyhessian(problem):
    model, x, y, _ = problem
    ours = hessian(model, F.cross_entropy, data=(x, y), cuda=False)
    values, vectors = ours.eigenvalues(maxIter=50, top_n=2)
    assert isinstance(values, list) and len(values) == 2 and all(isinstance(v, float) for v in values)
    assert len(vectors) == 2 and [t.shape for t in vectors[0]] == [p.shape for p in model.parameters()]
    samples = ours.trace(maxIter=5, tol=0.0)
    assert isinstance(samples, list) and len(samples) == 5 and all(isinstance(s, float) for s in samples)
    nodes, weights = ours.density(iter=10, n_v=3)
    assert len(nodes) == len(weights) == 3 and all(len(n) == len(w) == 10 for n, w in zip(nodes, weights))
    assert all(abs(sum(w) - 1.0) < 1e-10 for w in weights)
    with pytest.raises(ValueError, match="exactly one of data and dataloader"):
        hessian(model, F.cross_entropy)


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True:UserWarning")
def test_top_eigenvalue_and_trace_agree_with_pyhessian(problem):
    model, x, y, exact = problem
    assert exact[-1] > abs(exact[0])  # so PyHessian's largest-magnitude eigenvalue is the top one
    torch.manual_seed(0)
    ref = pyhessian.hessian(model, F.cross_entropy, data=(x, y), cuda=False)
    ref_top = ref.eigenvalues(maxIter=500, tol=1e-10, top_n=1)[0][0]
    torch.manual_seed(0)
    ref_trace = ref.trace(maxIter=200, tol=0.0)
    model.zero_grad(set_to_none=True)  # PyHessian leaves graph-carrying .grad behind

    ours = hessian(model, F.cross_entropy, data=(x, y), cuda=False)
    top = ours.eigenvalues(maxIter=100, tol=1e-10, top_n=1)[0][0]
    # Power iteration at tol 1e-10 converges to about 1e-6 here; Lanczos to round-off.
    assert top == pytest.approx(float(exact[-1]), rel=1e-10)
    assert ref_top == pytest.approx(top, rel=1e-5)
    torch.manual_seed(0)
    samples = torch.tensor(ours.trace(maxIter=200, tol=0.0), dtype=torch.float64)
    exact_trace = float(exact.sum())
    for s in (samples, torch.tensor(ref_trace, dtype=torch.float64)):
        assert abs(float(s.mean()) - exact_trace) <= 3 * float(s.std() / math.sqrt(s.numel()))
    assert all(p.grad is None for p in model.parameters())  # ours writes no .grad


def test_two_objects_in_a_row_stay_independent(problem):
    # PyHessian adds the first object's Hessian to the second's through the stale .grad; ours must not.
    model, x, y, exact = problem
    half = x.shape[0] // 2
    first = hessian(model, F.cross_entropy, data=(x[:half], y[:half]))
    first.eigenvalues(maxIter=30)
    full = hessian(model, F.cross_entropy, data=(x, y))
    assert full.eigenvalues(maxIter=100, tol=1e-10)[0][0] == pytest.approx(float(exact[-1]), rel=1e-10)


def test_density_moments_match_exact(problem):
    model, x, y, exact = problem
    torch.manual_seed(0)
    nodes, weights = hessian(model, F.cross_entropy, data=(x, y)).density(iter=40, n_v=4)
    n = torch.tensor(nodes, dtype=torch.float64)
    w = torch.tensor(weights, dtype=torch.float64)
    # First moment tr(H)/n: per-probe Rademacher quadratic forms, spread from the probes themselves.
    m1 = (w * n).sum(dim=1)
    assert abs(float(m1.mean()) - float(exact.mean())) <= 3 * float(m1.std() / 2)
    lo, hi = float(n.min()), float(n.max())
    assert float(exact[0]) - 1e-9 <= lo and hi <= float(exact[-1]) + 1e-9
