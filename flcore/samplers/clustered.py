"""Clustered sampling (Fraboni, Vidal, Kameni & Lorenzi, ICML 2021), Algorithm 2: clients grouped
by the similarity of their model updates, one client drawn per group."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy.cluster.hierarchy import fcluster, linkage

from flcore.samplers.base import ClientSampler

__all__ = ["ClusteredSampler", "clustered_distributions", "update_similarity"]

_UNIT = 10**9  # integer resolution of a distribution's mass (exact sums, as the authors' code)


def update_similarity(updates: np.ndarray, measure: str = "cosine") -> np.ndarray:
    """Pairwise similarity of client updates: ``(N, D)`` -> ``(N, N)``.

    ``cosine`` (a zero update has similarity 0 with everything), or the distances ``L2`` and
    ``L1``, the three measures of the authors' code.

    Raises:
        ValueError: unknown measure.
    """
    u = np.asarray(updates, dtype=np.float64)
    if measure == "cosine":
        norms = np.linalg.norm(u, axis=1)
        denom = np.outer(norms, norms)
        return np.divide(u @ u.T, denom, out=np.zeros((len(u), len(u))), where=denom > 0)
    if measure == "L2":
        sq = (u**2).sum(1)
        return np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * u @ u.T, 0.0))
    if measure == "L1":  # one row at a time: an (N, N, D) array would not fit for real models
        return np.stack([np.abs(u - row).sum(1) for row in u])
    raise ValueError(f"sampler.measure: must be one of ['cosine', 'L2', 'L1'], got {measure!r}")


def clustered_distributions(similarity: np.ndarray, weights: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """The m sampling distributions of clustered sampling, Algorithm 2.

    1. Ward hierarchical clustering of the clients (the rows of ``similarity`` as their
       descriptions, as in the authors' code).
    2. Each merge's height is replaced by the merged clients' total weight ``m * p``; cutting at 1
       gives clusters of total weight at most 1.
    3. The m heaviest clusters seed the m distributions; the clients of the other clusters (in a
       random order) fill the remaining capacity, a client's weight possibly split across two
       distributions.

    Every distribution sums to 1 and ``sum_k r[k, i] = m * p_i`` (so each client is drawn
    ``m p_i`` times in expectation, unbiased with equal aggregation weights).

    Args:
        similarity: ``(N, N)`` client similarities (or distances).
        weights: ``(N,)`` importances ``p_i >= 0`` (sample shares); renormalised.
        m: clients per round (distributions), ``1 <= m <= N``.
        rng: for the order in which small clusters are poured.

    Returns:
        ``(m, N)`` float array of probabilities.
    """
    n = len(weights)
    p = np.asarray(weights, dtype=np.float64)
    p = p / p.sum()
    mass = np.floor(p * m * _UNIT).astype(np.int64)
    short = m * _UNIT - int(mass.sum())
    mass[np.argsort(-p, kind="stable")[:short]] += 1  # exact total m * _UNIT
    if n == 1:
        return np.ones((1, 1))
    with warnings.catch_warnings():  # rows are used as observations on purpose (authors' code)
        warnings.filterwarnings("ignore", message=".*uncondensed distance matrix.*")
        tree = linkage(np.asarray(similarity, dtype=np.float64), "ward")
    cumulative = list(mass)
    for row in tree:
        cumulative.append(cumulative[int(row[0])] + cumulative[int(row[1])])
        row[2] = cumulative[-1]
    labels = fcluster(tree, _UNIT, criterion="distance")
    clusters = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    clusters.sort(key=lambda members: int(mass[members].sum()))
    dist = np.zeros((m, n), dtype=np.int64)
    for row, members in enumerate(clusters[len(clusters) - m:]):
        dist[row, members] = mass[members]
    k = 0
    for members in clusters[: len(clusters) - m]:
        for client in rng.permutation(members):
            left = int(mass[client])
            while left > 0:
                while dist[k].sum() >= _UNIT:
                    k += 1
                take = min(_UNIT - int(dist[k].sum()), left)
                dist[k, client] += take
                left -= take
    return dist / dist.sum(axis=1, keepdims=True)


class ClusteredSampler(ClientSampler):
    """Clustered sampling by model-update similarity (Fraboni et al. 2021, Algorithm 2).

    Each client is represented by its latest update (trained model minus the model it received,
    all floating state_dict entries flattened; zeros before its first participation). Every round
    the distributions of :func:`clustered_distributions` are rebuilt from the similarity of those
    updates and one client is drawn from each, so a client may be drawn twice. Results are
    aggregated with equal weights (``equal_weights``), the unbiased scheme of the paper; FedMR and
    FedCross use this as "CluSamp" with model-gradient similarity.

    Usable with any strategy: ``trainer.sampler: {class_path: flcore.samplers.ClusteredSampler}``.

    Args:
        measure: ``cosine`` (default), ``L2`` or ``L1``.

    Raises:
        ValueError: unknown measure.
    """

    equal_weights = True

    def __init__(self, measure: str = "cosine"):
        if measure not in ("cosine", "L2", "L1"):
            raise ValueError(f"sampler.measure: must be one of ['cosine', 'L2', 'L1'], got {measure!r}")
        self.measure = measure
        self.sizes: np.ndarray | None = None
        self.updates: torch.Tensor | None = None  # (N, D) float32, allocated at the first observation

    def setup(self, client_sizes: list[int]) -> None:
        self.sizes = np.asarray(client_sizes, dtype=np.float64)

    def sample(self, rnd, num_clients, k, rng):
        if self.updates is None:
            sim = np.zeros((num_clients, num_clients))
        else:
            sim = update_similarity(self.updates.numpy(), self.measure)
        weights = self.sizes if self.sizes is not None else np.ones(num_clients)
        dist = clustered_distributions(sim, weights, k, rng)
        return [int(rng.choice(num_clients, p=row)) for row in dist]

    def observe(self, tasks, results) -> None:
        start = {(t.cid, t.slot): t.state for t in tasks}
        for r in results:
            before = start[(r.cid, r.slot)]
            delta = torch.cat([(r.state[k].float() - before[k].float()).reshape(-1)
                               for k in r.state if r.state[k].is_floating_point()])
            if self.updates is None:
                self.updates = torch.zeros(len(self.sizes), delta.numel())
            self.updates[r.cid] = delta

    def state_dict(self) -> dict:
        return {} if self.updates is None else {"updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.updates = state.get("updates")
