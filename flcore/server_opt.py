"""Server optimizers: FedAvgM, FedAdam, FedAdagrad, FedYogi as a step after aggregation.

A single-model strategy (FedAvg and the strategies built on it: FedProx, SCAFFOLD, FedNova, MOON,
FedGen, and any sampler such as clustered sampling) aggregates the round's client models into
``x_agg``. With ``server_optimizer`` set, the global model does not jump to ``x_agg``; the server
treats the round's update ``Delta_t = x_agg - x_t`` (minus the pseudo-gradient) as a gradient
step of its own optimizer (Reddi et al., "Adaptive Federated Optimization", ICLR 2021,
Algorithm 2; Hsu et al. 2019 for FedAvgM), entry by entry:

* :class:`ServerSGD` (FedAvgM): ``m_t = beta m_{t-1} + Delta_t``; ``x_{t+1} = x_t + eta m_t``;
* :class:`ServerAdagrad`: ``v_t = v_{t-1} + Delta_t^2``;
* :class:`ServerAdam`: ``m_t = beta1 m_{t-1} + (1 - beta1) Delta_t``,
  ``v_t = beta2 v_{t-1} + (1 - beta2) Delta_t^2``;
* :class:`ServerYogi`: as Adam but ``v_t = v_{t-1} - (1 - beta2) Delta_t^2 sign(v_{t-1} - Delta_t^2)``;

and for the adaptive three ``m_t = beta1 m_{t-1} + (1 - beta1) Delta_t`` and
``x_{t+1} = x_t + eta m_t / (sqrt(v_t) + tau)`` (FedAdagrad's ``beta1`` defaults to 0, plain
Adagrad). As in Algorithm 2 there is no bias correction; ``m_{-1} = 0`` and
``v_{-1} = tau^2``. The step applies to the trained weights (:func:`flcore.functional.trained_keys`);
BatchNorm running statistics and integer buffers take the aggregate as it is. The optimizer's
state (``m``, ``v``) lives in the strategy state under ``"server_opt"``, so it is checkpointed and
resumed exactly with it.

    trainer:
      strategy:
        class_path: flcore.strategies.FedAvg
        init_args:
          server_optimizer: {class_path: flcore.server_opt.ServerAdam, init_args: {lr: 0.01, tau: 0.001}}
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from flcore.functional import StateDict, trained_keys

__all__ = ["ServerOptimizer", "ServerSGD", "ServerAdagrad", "ServerAdam", "ServerYogi", "apply_server_step",
           "server_step_on"]


class ServerOptimizer:
    """Base of the server optimizers: ``init_state`` and ``step`` are pure (no tensor of their
    arguments is modified).

    Args:
        lr: server learning rate eta > 0.

    Raises:
        ValueError: a setting out of range (names the field and the allowed range).
    """

    uses_second_moment = True

    def __init__(self, lr: float):
        if not lr > 0:
            raise ValueError(f"strategy.server_optimizer.lr: must be > 0, got {lr}")
        self.lr = float(lr)

    def init_state(self, x: StateDict) -> dict[str, StateDict]:
        """``{"m": zeros, "v": tau^2}`` over the trained weights of ``x`` (float32 or wider)."""
        keys = trained_keys(x)
        state = {"m": {k: torch.zeros_like(x[k]) for k in keys}}
        if self.uses_second_moment:
            state["v"] = {k: torch.full_like(x[k], self.tau ** 2) for k in keys}
        return state

    def second_moment(self, v: Tensor, d2: Tensor) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def step(self, x: StateDict, aggregate: StateDict, state: dict[str, StateDict]) -> tuple[StateDict, dict[str, StateDict]]:
        """One server step: the new global model and the new optimizer state.

        Args:
            x: the global model x_t of the round (its clients started from it).
            aggregate: the strategy's aggregate x_agg of the round's client models (same keys).
            state: the optimizer state from :meth:`init_state` or the previous step.

        Returns:
            ``(x_{t+1}, state_{t+1})``: trained weights stepped, every other entry ``aggregate``'s.
        """
        new_x = dict(aggregate)
        new_state = {name: dict(entries) for name, entries in state.items()}
        for key in state["m"]:
            delta = aggregate[key] - x[key]
            m = self.first_moment(state["m"][key], delta)
            new_state["m"][key] = m
            if self.uses_second_moment:
                v = self.second_moment(state["v"][key], delta * delta)
                new_state["v"][key] = v
                new_x[key] = x[key] + self.lr * m / (v.sqrt() + self.tau)
            else:
                new_x[key] = x[key] + self.lr * m
        return new_x, new_state

    def first_moment(self, m: Tensor, delta: Tensor) -> Tensor:
        return self.beta1 * m + (1.0 - self.beta1) * delta


def _check_beta(name: str, value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"strategy.server_optimizer.{name}: must be in [0, 1), got {value}")
    return float(value)


def _check_tau(tau: float) -> float:
    if not tau > 0:
        raise ValueError(f"strategy.server_optimizer.tau: must be > 0, got {tau}")
    return float(tau)


class ServerSGD(ServerOptimizer):
    """Server SGD with momentum: FedAvgM (Hsu et al. 2019; Reddi et al. 2021, Sec. 3) for
    ``momentum > 0``; ``lr = 1, momentum = 0`` is FedAvg itself.

    Args:
        lr: server learning rate eta > 0 (default 1.0).
        momentum: beta in [0, 1) (default 0.9).
    """

    uses_second_moment = False

    def __init__(self, lr: float = 1.0, momentum: float = 0.9):
        super().__init__(lr)
        self.momentum = _check_beta("momentum", momentum)

    def first_moment(self, m: Tensor, delta: Tensor) -> Tensor:
        return self.momentum * m + delta


class ServerAdagrad(ServerOptimizer):
    """FedAdagrad (Reddi et al. 2021, Algorithm 2): ``v_t = v_{t-1} + Delta_t^2``.

    Args:
        lr: eta > 0 (default 0.01).
        beta1: momentum of ``m`` in [0, 1) (default 0: plain Adagrad).
        tau: adaptivity tau > 0 (default 1e-3).
    """

    def __init__(self, lr: float = 0.01, beta1: float = 0.0, tau: float = 1e-3):
        super().__init__(lr)
        self.beta1, self.tau = _check_beta("beta1", beta1), _check_tau(tau)

    def second_moment(self, v: Tensor, d2: Tensor) -> Tensor:
        return v + d2


class ServerAdam(ServerOptimizer):
    """FedAdam (Reddi et al. 2021, Algorithm 2): ``v_t = beta2 v_{t-1} + (1 - beta2) Delta_t^2``.

    Args:
        lr: eta > 0 (default 0.01).
        beta1: in [0, 1) (default 0.9).
        beta2: in [0, 1) (default 0.99).
        tau: adaptivity tau > 0 (default 1e-3).
    """

    def __init__(self, lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3):
        super().__init__(lr)
        self.beta1, self.beta2 = _check_beta("beta1", beta1), _check_beta("beta2", beta2)
        self.tau = _check_tau(tau)

    def second_moment(self, v: Tensor, d2: Tensor) -> Tensor:
        return self.beta2 * v + (1.0 - self.beta2) * d2


class ServerYogi(ServerAdam):
    """FedYogi (Reddi et al. 2021, Algorithm 2): ``v_t = v_{t-1} - (1 - beta2) Delta_t^2
    sign(v_{t-1} - Delta_t^2)``; arguments as :class:`ServerAdam`."""

    def second_moment(self, v: Tensor, d2: Tensor) -> Tensor:
        return v - (1.0 - self.beta2) * d2 * torch.sign(v - d2)


def apply_server_step(optimizer: ServerOptimizer | None, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The strategy state ``new`` (after aggregation) with the server step applied to its
    ``"global"`` model, starting from ``old["global"]``; ``new`` unchanged without an optimizer
    (or when the round had no results and ``new is old``)."""
    if optimizer is None or new is old:
        return new
    x, opt_state = optimizer.step(old["global"], new["global"], old["server_opt"])
    return {**new, "global": x, "server_opt": opt_state}


def server_step_on(optimizer: ServerOptimizer, x: StateDict, aggregate: StateDict,
                   state: dict[str, StateDict]) -> tuple[StateDict, dict[str, StateDict]]:
    """One server step on the entries of ``aggregate`` only: a layer-wise heterogeneous round
    (FedIN Eq. 19) aggregates the keys that some client of the round has, so the pseudo-gradient
    is defined there alone. The other entries of the model and their optimizer state do not move
    (no momentum carries a key that no client trained).

    Args:
        x: the global model of the round (every key of ``aggregate``, and more).
        aggregate: the round's aggregate of some of ``x``'s keys.
        state: the optimizer state over all of ``x``'s trained keys.

    Returns:
        ``(stepped, state')``: the new values of ``aggregate``'s keys, and the optimizer state
        with those keys' moments advanced.
    """
    keys = [k for k in state["m"] if k in aggregate]
    sub = {name: {k: entries[k] for k in keys} for name, entries in state.items()}
    stepped, new_sub = optimizer.step({k: x[k] for k in aggregate}, aggregate, sub)
    return stepped, {name: {**entries, **new_sub[name]} for name, entries in state.items()}
