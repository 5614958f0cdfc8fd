"""Why a global model generalizes: loss landscapes and sharpness (the seeds' first research
question: FedCross paper, Sec. IV-B and Fig. 4; FedMR papers' flat-minima argument).

Pure functions of a network (``nn.Module``), a ``state_dict`` and an evaluation set ``(x, y)``
(``x``: ``(N, ...)`` inputs, ``y``: ``(N,)`` labels). Every evaluation runs in eval mode (BatchNorm
uses its running statistics, so the loss is a deterministic function of the weights), batched,
with no Trainer. Randomness comes from an explicit ``torch.Generator``.

* :func:`filter_normalized_direction`, :func:`loss_curve_1d`, :func:`loss_surface_2d`: the
  filter-normalized random-direction plots of Li et al., "Visualizing the Loss Landscape of
  Neural Nets" (NeurIPS 2018), Sec. 4: each filter of a random Gaussian direction is rescaled to
  the norm of the same filter of the weights; biases and BatchNorm parameters (every entry of
  one dimension or less) get a zero direction, as that paper does.
* :func:`interpolate_curve`: the loss along ``(1 - t) w_a + t w_b`` between two models (e.g. the
  FedAvg and FedCross global models), buffers included.
* :func:`hessian_top_eigenvalue` (power iteration on Hessian-vector products) and
  :func:`hessian_trace` (Hutchinson's estimator with Rademacher vectors): sharpness of the loss
  on a fixed subsample, over the trainable parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flcore.functional import StateDict

__all__ = ["filter_normalized_direction", "combine", "evaluate", "loss_curve_1d", "loss_surface_2d",
           "interpolate_curve", "hessian_vector_product", "hessian_top_eigenvalue", "hessian_trace"]

LossFn = Callable[[Tensor, Tensor], Tensor]


def filter_normalized_direction(state: StateDict, generator: torch.Generator) -> StateDict:
    """A random direction in weight space, filter-normalized (Li et al. 2018, Sec. 4, Eq. 1).

    For an entry ``w`` with two or more dimensions: ``d ~ N(0, I)`` of ``w``'s shape, then each
    filter ``d[i]`` (a slice along dimension 0: a conv filter or a row of a linear layer) is
    scaled to ``||w[i]||``. Entries of one dimension or less (biases, BatchNorm weight / bias /
    running statistics, counters) and non-float entries get zeros.

    Args:
        state: the model, ``{key: tensor}``.
        generator: seeds the draw.

    Returns:
        ``{key: tensor}`` of the same keys, shapes and dtypes (float32 for integer entries' zeros
        is not needed: integer entries keep their dtype).
    """
    out: StateDict = {}
    for key, w in state.items():
        if not w.is_floating_point() or w.dim() <= 1:
            out[key] = torch.zeros_like(w)
            continue
        d = torch.randn(w.shape, generator=generator, dtype=torch.float32).to(w.dtype)
        w_norm = w.reshape(w.shape[0], -1).float().norm(dim=1)
        d_norm = d.reshape(d.shape[0], -1).float().norm(dim=1)
        scale = (w_norm / (d_norm + 1e-10)).to(w.dtype)
        out[key] = d * scale.view(-1, *([1] * (w.dim() - 1)))
    return out


def combine(state: StateDict, directions: Sequence[StateDict], coefficients: Sequence[float]) -> StateDict:
    """``w + sum_i c_i d_i`` on the floating entries; other entries are ``state``'s."""
    out: StateDict = {}
    for key, w in state.items():
        if not w.is_floating_point():
            out[key] = w
            continue
        v = w.clone()
        for d, c in zip(directions, coefficients):
            if c:
                v.add_(d[key], alpha=float(c))
        out[key] = v
    return out


@torch.no_grad()
def evaluate(net: nn.Module, state: StateDict, x: Tensor, y: Tensor, batch_size: int = 2000,
             loss_fn: LossFn = F.cross_entropy) -> tuple[float, float]:
    """Mean loss and accuracy of ``net`` with weights ``state`` on ``(x, y)`` (eval mode).

    ``loss_fn(output, y)`` must return the batch mean; accuracy is ``argmax(output) == y`` for
    ``(B, C)`` outputs and NaN otherwise.
    """
    net.load_state_dict(state)
    was = net.training
    net.eval()
    total, correct, n = 0.0, 0, len(y)
    for start in range(0, n, batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        out = net(xb)
        total += float(loss_fn(out, yb)) * len(yb)
        if out.dim() == 2:
            correct += int((out.argmax(1) == yb).sum())
    net.train(was)
    return total / max(n, 1), (correct / n if n and out.dim() == 2 else math.nan)


def loss_curve_1d(net: nn.Module, state: StateDict, direction: StateDict, alphas: Sequence[float], x: Tensor,
                  y: Tensor, **kw) -> dict[str, list[float]]:
    """Loss and accuracy at ``w + alpha d`` for each alpha: ``{"alpha", "loss", "acc"}``."""
    points = [evaluate(net, combine(state, [direction], [a]), x, y, **kw) for a in alphas]
    return {"alpha": [float(a) for a in alphas], "loss": [p[0] for p in points], "acc": [p[1] for p in points]}


def loss_surface_2d(net: nn.Module, state: StateDict, d1: StateDict, d2: StateDict, alphas: Sequence[float],
                    betas: Sequence[float], x: Tensor, y: Tensor, **kw) -> dict[str, list]:
    """Loss and accuracy at ``w + a d1 + b d2`` on the grid: ``{"alpha", "beta", "loss", "acc"}``
    with ``loss[i][j]`` at ``(alphas[i], betas[j])``."""
    loss = [[0.0] * len(betas) for _ in alphas]
    acc = [[0.0] * len(betas) for _ in alphas]
    for i, a in enumerate(alphas):
        for j, b in enumerate(betas):
            loss[i][j], acc[i][j] = evaluate(net, combine(state, [d1, d2], [a, b]), x, y, **kw)
    return {"alpha": [float(a) for a in alphas], "beta": [float(b) for b in betas], "loss": loss, "acc": acc}


def interpolate_curve(net: nn.Module, state_a: StateDict, state_b: StateDict, ts: Sequence[float], x: Tensor,
                      y: Tensor, **kw) -> dict[str, list[float]]:
    """Loss and accuracy at ``(1 - t) w_a + t w_b`` (floating entries, BatchNorm statistics
    included; integer entries from ``w_a``): ``{"t", "loss", "acc"}``."""
    diff = {k: (state_b[k] - state_a[k]) if v.is_floating_point() else v for k, v in state_a.items()}
    points = [evaluate(net, combine(state_a, [diff], [t]), x, y, **kw) for t in ts]
    return {"t": [float(t) for t in ts], "loss": [p[0] for p in points], "acc": [p[1] for p in points]}


def hessian_vector_product(net: nn.Module, x: Tensor, y: Tensor, vector: list[Tensor], batch_size: int = 2000,
                           loss_fn: LossFn = F.cross_entropy) -> list[Tensor]:
    """``H v`` of the mean loss over ``(x, y)`` with respect to ``net``'s trainable parameters
    (in ``parameters()`` order), by double back-propagation, batch by batch (each batch weighted
    by its share of the samples). ``net`` should be in eval mode."""
    params = [p for p in net.parameters() if p.requires_grad]
    out = [torch.zeros_like(p) for p in params]
    n = len(y)
    for start in range(0, n, batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        loss = loss_fn(net(xb), yb) * (len(yb) / n)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        hv = torch.autograd.grad(grads, params, grad_outputs=vector)
        for o, h in zip(out, hv):
            o.add_(h.detach())
    return out


def _prepare(net: nn.Module, state: StateDict) -> list[Tensor]:
    net.load_state_dict(state)
    net.eval()
    return [p for p in net.parameters() if p.requires_grad]


def _dot(a: list[Tensor], b: list[Tensor]) -> float:
    return float(sum((u.double() * v.double()).sum() for u, v in zip(a, b)))


def hessian_top_eigenvalue(net: nn.Module, state: StateDict, x: Tensor, y: Tensor, generator: torch.Generator,
                           iters: int = 100, tol: float = 1e-4, **kw) -> float:
    """The largest-magnitude eigenvalue of the loss Hessian at ``state`` (power iteration: ``v <-
    Hv / ||Hv||`` from a seeded Gaussian start, stopping when the Rayleigh quotient ``v^T H v``
    changes by less than ``tol`` relative). Over ``net``'s trainable parameters; eval mode.

    Raises:
        ValueError: ``iters < 1``.
    """
    if iters < 1:
        raise ValueError(f"iters: must be >= 1, got {iters}")
    params = _prepare(net, state)
    v = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
    norm = math.sqrt(_dot(v, v))
    v = [t / norm for t in v]
    eig = None
    for _ in range(iters):
        hv = hessian_vector_product(net, x, y, v, **kw)
        new = _dot(v, hv)
        norm = math.sqrt(_dot(hv, hv))
        if norm == 0.0:
            return 0.0
        v = [t / norm for t in hv]
        if eig is not None and abs(new - eig) <= tol * max(abs(eig), 1e-12):
            return new
        eig = new
    return float(eig)


def hessian_trace(net: nn.Module, state: StateDict, x: Tensor, y: Tensor, generator: torch.Generator,
                  samples: int = 100, **kw) -> tuple[float, float]:
    """Hutchinson's estimate of the loss Hessian's trace at ``state``: the mean of ``v^T H v``
    over ``samples`` Rademacher vectors ``v`` (entries +-1), and its standard error. Over
    ``net``'s trainable parameters; eval mode.

    Raises:
        ValueError: ``samples < 1``.
    """
    if samples < 1:
        raise ValueError(f"samples: must be >= 1, got {samples}")
    params = _prepare(net, state)
    values = []
    for _ in range(samples):
        v = [torch.randint(0, 2, p.shape, generator=generator).to(p.dtype) * 2 - 1 for p in params]
        values.append(_dot(v, hessian_vector_product(net, x, y, v, **kw)))
    mean = sum(values) / len(values)
    var = sum((a - mean) ** 2 for a in values) / max(len(values) - 1, 1)
    return mean, math.sqrt(var / len(values))
