"""DP-FedAvg: client-level differential privacy at the server (McMahan et al., ICLR 2018), with
fixed or adaptive clipping (Andrew et al., NeurIPS 2021)."""

from __future__ import annotations

import math
from typing import Any

import torch

from flcore.functional import clip_update, epsilon_spent, noise_multiplier_for_updates
from flcore.metric_names import DP_EPSILON
from flcore.server_opt import ServerOptimizer
from flcore.strategies.fedavg import FedAvg

__all__ = ["DPFedAvg"]


class DPFedAvg(FedAvg):
    """DP-FedAvg with client-level central differential privacy (McMahan et al., ICLR 2018,
    Algorithm 1 with the fixed-denominator estimator).

    Each round every returned update ``Delta_i = w_i - w`` (every floating-point entry, BatchNorm
    statistics included) is clipped to L2 norm ``C`` (:func:`clip_update`); the server adds
    Gaussian noise ``N(0, (z C)^2)`` to their sum (``z`` = ``noise_multiplier``; drawn from the
    round's seeded generator, so runs reproduce) and divides by the clients per round ``K`` (not by
    the number that answered: the sensitivity stays ``C / K``); ``w <- w + that``. Integer buffers
    keep the global value (a batch count would leak data sizes). With ``adaptive_clipping``, ``C``
    follows the ``target_quantile`` of the update norms (Andrew et al., NeurIPS 2021): ``C <- C
    exp(-clip_lr (b - gamma))``, ``b`` the noised fraction of unclipped updates (noise std
    ``clip_count_stddev / K``), and the updates' noise multiplier is lowered so that the two
    releases together spend what ``z`` alone would (:func:`noise_multiplier_for_updates`).

    Privacy: after ``t`` rounds, ``dp/epsilon`` at ``delta`` is the RDP accountant's epsilon for
    ``t`` compositions of the Gaussian mechanism with noise ``z`` and sampling rate
    ``q = clients_per_round / num_clients`` (:func:`epsilon_spent`, Opacus). The accountant assumes
    Poisson sampling; flcore's samplers draw exactly K clients, the usual approximation. With
    ``target_epsilon`` the run ends, finished, after the last round whose epsilon stays within it.

    Logged per round: ``dp/epsilon``, ``dp/clip_norm``, ``dp/unclipped_fraction`` (noised when
    adaptive). State: ``{"global", "dp": {"rounds", "clip_norm", "unclipped"}}`` (plus
    ``"server_opt"``).

    Args:
        clip_norm: C > 0, the initial C when adaptive.
        noise_multiplier: z >= 0 (0: clipping only, no privacy: epsilon is infinite).
        delta: the delta of (epsilon, delta)-DP, in (0, 1) (default 1e-5).
        target_epsilon: stop before the epsilon would exceed this (> 0), or ``None``.
        adaptive_clipping: follow a quantile of the update norms (default false).
        target_quantile: gamma in (0, 1) (default 0.5).
        clip_lr: eta_C > 0 (default 0.2).
        clip_count_stddev: sigma_b of the noised count (default ``K / 20``, as Andrew et al.).
        server_optimizer: as :class:`FedAvg` (DP-FedAdam etc.): it steps on the noised update.

    Raises:
        ValueError: a setting out of range (names the field); ``target_epsilon`` below one
            round's epsilon (before training).
    """

    def __init__(self, clip_norm: float = 1.0, noise_multiplier: float = 1.0, delta: float = 1e-5,
                 target_epsilon: float | None = None, adaptive_clipping: bool = False, target_quantile: float = 0.5,
                 clip_lr: float = 0.2, clip_count_stddev: float | None = None,
                 server_optimizer: ServerOptimizer | None = None):
        super().__init__(server_optimizer)
        checks = [("clip_norm", clip_norm > 0, "> 0"), ("noise_multiplier", noise_multiplier >= 0, ">= 0"),
                  ("delta", 0 < delta < 1, "in (0, 1)"),
                  ("target_epsilon", target_epsilon is None or target_epsilon > 0, "> 0 or null"),
                  ("target_quantile", 0 < target_quantile < 1, "in (0, 1)"), ("clip_lr", clip_lr > 0, "> 0"),
                  ("clip_count_stddev", clip_count_stddev is None or clip_count_stddev > 0, "> 0 or null")]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"strategy.{name}: must be {allowed}, got {locals()[name]!r}")
        self.clip_norm, self.noise_multiplier, self.delta = float(clip_norm), float(noise_multiplier), float(delta)
        self.target_epsilon = None if target_epsilon is None else float(target_epsilon)
        self.adaptive_clipping, self.target_quantile, self.clip_lr = bool(adaptive_clipping), float(target_quantile), float(clip_lr)
        self.clip_count_stddev = clip_count_stddev

    def _count_stddev(self, clients_per_round: int) -> float:
        return float(self.clip_count_stddev) if self.clip_count_stddev is not None else clients_per_round / 20

    def validate(self, num_clients: int, clients_per_round: int) -> None:
        if self.adaptive_clipping:
            noise_multiplier_for_updates(self.noise_multiplier, self._count_stddev(clients_per_round))
        try:
            first = epsilon_spent(self.noise_multiplier, clients_per_round / num_clients, 1, self.delta)
        except ImportError as err:  # before training, as one line
            raise ValueError(str(err)) from None
        if self.target_epsilon is not None and first > self.target_epsilon:
            raise ValueError(f"strategy.target_epsilon: one round already spends epsilon {first:.3g} > "
                             f"{self.target_epsilon:g}; raise noise_multiplier or target_epsilon")

    def initialize(self, model_state, clients_per_round, num_clients=0):
        return {**super().initialize(model_state, clients_per_round, num_clients),
                "dp": {"rounds": 0, "clip_norm": self.clip_norm, "unclipped": math.nan,
                       "clients_per_round": clients_per_round, "num_clients": int(num_clients)}}

    def aggregate_fit(self, rnd, results, state, rng) -> dict[str, Any]:
        if not results:
            return state
        dp = state["dp"]
        x, k, clip = state["global"], dp["clients_per_round"], dp["clip_norm"]
        floats = [key for key, v in x.items() if v.is_floating_point()]
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        total = {key: torch.zeros_like(x[key], dtype=torch.float64) for key in floats}
        unclipped = 0
        for r in results:
            clipped, norm = clip_update({key: r.state[key].double() - x[key].double() for key in floats}, clip)
            unclipped += norm <= clip
            for key in floats:
                total[key] += clipped[key]
        z = self.noise_multiplier
        if self.adaptive_clipping:
            z = noise_multiplier_for_updates(z, self._count_stddev(k))
        new_x = dict(x)
        for key in floats:
            noise = torch.randn(total[key].shape, generator=generator, dtype=torch.float64) * (z * clip)
            new_x[key] = (x[key].double() + (total[key] + noise) / k).to(x[key].dtype)
        fraction = unclipped / k
        new_clip = clip
        if self.adaptive_clipping:
            fraction = (unclipped + float(torch.randn((), generator=generator, dtype=torch.float64))
                        * self._count_stddev(k)) / k
            new_clip = clip * math.exp(-self.clip_lr * (fraction - self.target_quantile))
        new = {**state, "global": new_x,
               "dp": {**dp, "rounds": dp["rounds"] + 1, "clip_norm": new_clip, "unclipped": fraction, "last_clip": clip}}
        return self.server_step(state, new)

    def _epsilon(self, dp: dict[str, Any], rounds: int) -> float:
        return epsilon_spent(self.noise_multiplier, dp["clients_per_round"] / max(dp["num_clients"], 1), rounds, self.delta)

    def round_metrics(self, state) -> dict[str, float]:
        dp = state["dp"]
        return {DP_EPSILON: self._epsilon(dp, dp["rounds"]), "dp/clip_norm": float(dp.get("last_clip", dp["clip_norm"])),
                "dp/unclipped_fraction": float(dp["unclipped"])}

    def rounds_allowed(self, state) -> int | None:
        if self.target_epsilon is None:
            return None
        dp = state["dp"]
        if self._epsilon(dp, dp["rounds"] + 1) > self.target_epsilon:
            return 0
        return 1 if self._epsilon(dp, dp["rounds"] + 2) > self.target_epsilon else None
