"""``ClientModule``: one client's local update with plain cross-entropy (FedAvg's objective).

The federated trainer reuses one instance for every client: it loads the dispatched weights into
``net``, hands the strategy's extra payload to :meth:`ClientModule.configure_client`, runs
``lightning.Trainer.fit`` for the local epochs, and reads back ``net.state_dict()`` and
:meth:`ClientModule.client_upload`. Objectives that are "cross-entropy plus something"
(FedProx, SCAFFOLD, MOON, ...) subclass it and override :meth:`ClientModule.training_loss` (or
:meth:`ClientModule.batch_loss` when they need more than the logits).

Speed: the module uses Lightning's manual optimization, and one Lightning training step carries
at least one local epoch: the batch it receives is an epoch's list of mini-batches (from
:class:`datamodules.ShuffledEpochs`, or any list of ``(x, y)`` pairs; a plain ``(x, y)`` batch from
a DataLoader works too), or an iterable of such epochs (in the federated loop, a client's whole
local update or a whole group of clients', see :mod:`flcore.local`). Each mini-batch is one SGD
step through ``manual_backward`` and the LightningOptimizer (or, under plain fp32 with no callback
on the step hooks, the same hooks called directly), so precision plugins (AMP gradient scaling),
``on_before_backward``, ``on_after_backward`` and ``on_before_optimizer_step`` hooks behave as
under automatic optimization, while the Trainer's per-step loop machinery (about 1 ms per step on
a CPU, more than a small model's whole step) runs once per Lightning step. Gradient accumulation and clipping, which
Lightning refuses to automate under manual optimization, are done here (:meth:`set_local_options`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from lightning_modules.dp import LEDGER_KEY, DPSteps, LocalDP
from lightning_modules.models.protocols import ModelFamily, num_classes_of

__all__ = ["ClientModule", "EarlierEpoch", "default_optimizer"]

#: Callback hooks that Lightning calls on every optimizer step under manual optimization.
_STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")


def _classes(records: Tensor) -> Tensor:
    """Predicted classes from recorded ``(B, C)`` logits, or the classes themselves."""
    return records.argmax(1) if records.is_floating_point() else records


class EarlierEpoch(list):
    """A local epoch's mini-batches (a list of ``(x, y)`` pairs) that is not the client's last
    local epoch: :meth:`ClientModule.training_step` trains on it without recording its metrics,
    since :attr:`ClientModule.train_metrics` describe the last local epoch only. Keeping each
    step's loss and logits costs a few microseconds a step, a visible share of a small model's
    step (:class:`flcore.local.LocalEpochs` marks a client's earlier epochs with it)."""


def default_optimizer(params: Iterable) -> torch.optim.Optimizer:
    """SGD with learning rate 0.01 and momentum 0.5 (FedCross paper, Sec. IV-A)."""
    return torch.optim.SGD(params, lr=0.01, momentum=0.5)


class ClientModule(L.LightningModule):
    """Local objective: cross-entropy on the client's data.

    Args:
        net: the network; must expose ``num_classes`` (int) or produce ``(B, classes)`` logits.
        optimizer: factory ``params -> Optimizer``, called at each local update so optimizer
            state (momentum) starts fresh for every client, as in the papers.
        channels_last: run convolutions in channels-last memory format (faster on CPU for CNNs).

    Logged per epoch (not per step): ``train_loss``, ``train_acc``; in validate/test:
    ``val_loss``/``val_acc`` and ``test_loss``/``test_acc`` (sample-weighted means).

    Contracts (class attributes that the federated trainer checks before any training):

    * :attr:`server_strategies`: the server halves this objective needs;
    * :attr:`keeps_client_state`: whether it keeps state on the client between rounds
      (:meth:`load_client_state` / :meth:`client_state`).
    """

    #: The server strategies this objective needs, as ``"module.Class"`` names (an instance of one
    #: of them, or of a subclass, is required); empty: any strategy whose own
    #: ``client_objective`` admits this module. An objective whose uploads only one server reads
    #: (SCAFFOLD's ``delta_c``) names that server, so it never runs silently as another method.
    server_strategies: ClassVar[tuple[str, ...]] = ()
    #: Whether the objective keeps state on the client between its rounds (SCAFFOLD's c_i, MOON's
    #: previous model). The trainer then keeps each client's :meth:`client_state`, checkpoints it,
    #: and hands it back through :meth:`load_client_state` at the client's next participation.
    keeps_client_state: ClassVar[bool] = False
    #: Whether :meth:`training_loss` (or :meth:`batch_loss`) adds a term that depends on no
    #: sample (FedProx's proximal term). Under local DP-SGD (``trainer.local_dp``) its gradient
    #: is kept beside the clipped and noised per-sample gradients; any other term is clipped
    #: with the samples' (:mod:`lightning_modules.dp`).
    sample_free_loss_terms: ClassVar[bool] = False
    #: Whether the objective can run under local DP-SGD (one forward pass of the net per step).
    supports_local_dp: ClassVar[bool] = True

    def __init__(self, net: nn.Module, optimizer: OptimizerCallable = default_optimizer, channels_last: bool = False):
        super().__init__()
        self.net = net
        self.optimizer_factory = optimizer
        self.channels_last = bool(channels_last)
        num_classes = num_classes_of(net)
        self.num_classes = num_classes
        self.loss_mean = MeanMetric()
        self.acc = MulticlassAccuracy(num_classes=num_classes or 2, average="micro")
        self.automatic_optimization = False  # one Lightning step = one local epoch (module docstring)
        self.accumulate_grad_batches = 1
        self.gradient_clip_val: float | None = None
        self.gradient_clip_algorithm = "norm"
        self._epoch_records: list[tuple[Tensor, Tensor, Tensor]] = []
        self._train_metrics: dict[str, float] = {}
        self._direct = False  # per fit: see _plain_steps
        self._recording = True  # whether training steps keep their metrics (EarlierEpoch)
        self.local_dp: DPSteps | None = None  # local DP-SGD (set_local_dp)
        #: The 0-based round of the client update in progress (``ClientTask.rnd``), set by the
        #: local runner before :meth:`configure_client` (FedGen's decaying weights, ScaleFL's
        #: distillation start read it).
        self.current_round = 0
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)

    # ----- hooks the federated side uses -------------------------------------------------
    def set_num_classes(self, num_classes: int) -> None:
        """Evaluate over ``num_classes`` classes: set by the federated trainer from the data when
        the net has no ``num_classes`` attribute (its ``(B, C)`` outputs were checked against
        the data first).

        Raises:
            ValueError: ``num_classes < 1``.
        """
        if num_classes < 1:
            raise ValueError(f"num_classes: must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.acc = MulticlassAccuracy(num_classes=self.num_classes, average="micro").to(self.device)

    def for_architecture(self, arch: str) -> ClientModule:
        """A copy of this objective whose net is family member ``arch`` (heterogeneous-model
        runs: one reusable module per architecture). ``net`` must have ``with_architecture``
        (e.g. :class:`lightning_modules.models.HeteroResNet`).

        Raises:
            ValueError: the net is not a model family, or ``arch`` is not a member.
        """
        if not isinstance(self.net, ModelFamily):
            raise ValueError(f"model.net: {type(self.net).__name__} has no architectures; heterogeneous runs need a "
                             f"model family such as lightning_modules.models.HeteroResNet")
        clone = copy.deepcopy(self)
        clone.net = self.net.with_architecture(arch)
        if self.channels_last:
            clone.net.to(memory_format=torch.channels_last)
        return clone

    def check_local_config(self, local: dict[str, Any]) -> None:
        """Refuse per-client Trainer settings this objective cannot honour (raise ``ValueError``
        naming the field). Called before any training. The base accepts everything."""

    def load_client_state(self, state: dict[str, Any] | None) -> None:
        """Receive this client's own state (``ClientTask.client_state``: what :meth:`client_state`
        returned after its previous participation; ``None`` before the first) before
        :meth:`configure_client`. Only called when :attr:`keeps_client_state`. Not communication."""

    def client_state(self) -> dict[str, Any] | None:
        """The state this client keeps for its next participation (``ClientResult.client_state``),
        read after :meth:`client_upload`; ``None``: none. Tensors on the CPU."""
        return None

    def set_local_dp(self, config: LocalDP | None) -> None:
        """Train every client with local DP-SGD under ``config`` (``None``: plain SGD). Set by
        the federated trainer after its checks (:func:`lightning_modules.dp.dp_refusal`)."""
        self.local_dp = None if config is None else DPSteps(config)

    @property
    def holds_client_state(self) -> bool:
        """Whether the trainer keeps a state for each client: the objective's
        (:attr:`keeps_client_state`) or local DP-SGD's step count."""
        return self.keeps_client_state or self.local_dp is not None

    def receive_client_state(self, state: dict[str, Any] | None) -> None:
        """A client's kept state (``None`` before its first round): the DP-SGD step count to the
        accountant, the rest to :meth:`load_client_state`."""
        if self.local_dp is not None:
            self.local_dp.steps_before = int((state or {}).get(LEDGER_KEY, 0))
        if self.keeps_client_state:
            self.load_client_state(state)

    def kept_client_state(self) -> dict[str, Any] | None:
        """What the trainer keeps for this client: :meth:`client_state`, plus the DP-SGD step
        count under local DP."""
        own = self.client_state() if self.keeps_client_state else None
        if self.local_dp is None:
            return own
        return {**(own or {}), LEDGER_KEY: self.local_dp.steps_before + self.local_dp.steps}

    def configure_client(self, payload: Any) -> None:
        """Receive the strategy's extra payload before training (``ClientTask.payload``: the
        method pair's task dataclass, or a ``dict``); ``net`` already holds the dispatched
        weights, :meth:`load_client_state` has run and :attr:`current_round` is set. The base
        objective needs none."""

    def on_client_start(self) -> None:
        """Called at the start of every client's local update, inside the fit, after
        :meth:`configure_client`: the net holds the dispatched weights, the optimizer exists (with
        cleared state) and the module is on its device. Objectives that prepare per-client
        tensors on the device (FedProx's anchor, SCAFFOLD's correction) do it here: one fit may
        train several clients, so ``on_train_start`` runs once per group, not per client."""

    def client_upload(self) -> Any:
        """Extra data to send to the server after training (``ClientResult.payload``: the method
        pair's upload dataclass, e.g. SCAFFOLD's control-variate change, or a ``dict``), counted
        as communication."""
        return {}

    def training_loss(self, logits: Tensor, y: Tensor, x: Tensor) -> Tensor:
        """The local objective; subclasses add their terms. Shapes: logits ``(B, C)``, y ``(B,)``."""
        return F.cross_entropy(logits, y)

    # ----- Lightning ---------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _common_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = self.training_loss(logits, y, x) if stage == "train" else F.cross_entropy(logits, y)
        self._record(loss, logits, y)
        return loss

    def _record(self, loss: Tensor, logits: Tensor, y: Tensor) -> None:
        """Keep a mini-batch's loss, labels and, in training, its logits (the predicted classes
        are taken when the metrics are read, so only for the last local epoch); in evaluation its
        predicted classes. The TorchMetrics states are updated once per epoch (:meth:`_log_epoch`),
        not once per step. Nothing is kept in training on an :class:`EarlierEpoch`."""
        if self.training and not self._recording:
            return
        self._epoch_records.append((loss.detach(), logits.detach() if self.training else logits.detach().argmax(1), y))

    def _flush_records(self) -> None:
        if not self._epoch_records:
            return
        losses, preds, ys = zip(*self._epoch_records)
        self._epoch_records = []
        sizes = torch.tensor([len(y) for y in ys], dtype=torch.float32, device=losses[0].device)
        self.loss_mean.update(torch.stack(losses).float(), weight=sizes)
        self.acc.update(_classes(torch.cat(preds)), torch.cat(ys))

    def _compute_metrics(self) -> tuple[Tensor, Tensor]:
        self._flush_records()
        loss, acc = self.loss_mean.compute(), self.acc.compute()
        self.loss_mean.reset()
        self.acc.reset()
        return loss, acc

    def _log_epoch(self, stage: str) -> None:
        loss, acc = self._compute_metrics()
        self.log(f"{stage}_loss", loss, prog_bar=False)
        self.log(f"{stage}_acc", acc, prog_bar=False)

    @property
    def train_metrics(self) -> dict[str, float]:
        """``{"train_loss", "train_acc"}`` of the last local epoch: the sample-weighted mean of the
        mini-batch losses and the fraction of correctly classified samples (micro accuracy),
        computed when read: once per client, not per epoch. Training bookkeeping is plain tensor
        arithmetic; ``self.log`` or TorchMetrics' stateful (or even functional) accuracy cost
        more than a small client's whole step here. Evaluation uses TorchMetrics."""
        if self._epoch_records:
            losses, preds, ys = zip(*self._epoch_records)
            self._epoch_records = []
            counts = [len(y) for y in ys]
            correct = int((_classes(torch.cat(preds)) == torch.cat(ys)).sum())
            losses = torch.stack(losses).tolist()
            n = sum(counts)
            self._train_metrics = {"train_loss": sum(l * c for l, c in zip(losses, counts)) / n, "train_acc": correct / n}
        return dict(self._train_metrics)

    def set_local_options(self, accumulate_grad_batches: int = 1, gradient_clip_val: float | None = None,
                          gradient_clip_algorithm: str = "norm") -> None:
        """Gradient accumulation (optimizer step every ``accumulate_grad_batches`` mini-batches and
        at the end of each epoch, with the loss divided by the group size) and clipping (Lightning's
        ``clip_gradients``, after AMP unscaling, in :meth:`on_before_optimizer_step`), as the
        ``trainer.local`` keys of the same names. Set by the federated trainer."""
        self.accumulate_grad_batches = int(accumulate_grad_batches)
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm

    def batch_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        """The local objective on one mini-batch ``(x (B, ...), y (B,))``; records the batch's
        metrics. Subclasses that need more than the logits (MOON, FedGen) override this."""
        return self._common_step(batch, "train")

    def local_step(self, batch: tuple[Tensor, Tensor], optimizer, first: bool, last: bool, scale: float) -> Tensor:
        """One mini-batch of a local epoch: backward of ``batch_loss * scale``; the optimizer steps
        when ``last`` (end of an accumulation group) and gradients are cleared when ``first``.
        ``optimizer`` is the ``LightningOptimizer``. Objectives that combine several gradients by
        hand (FedIN) override this."""
        direct = self._direct  # what Lightning's fp32 precision plugin does, without its dispatch
        opt = optimizer.optimizer if direct else optimizer
        dp = self.local_dp
        if first:
            opt.zero_grad(set_to_none=True)
            if dp is not None:
                dp.clear()
        size = len(batch[1])
        loss = self.batch_loss(batch) if size or dp is None else None  # (DP-SGD: an empty Poisson batch)
        if loss is not None:
            scaled = loss * scale if scale != 1.0 else loss
            if direct:
                self.on_before_backward(scaled)
                self.backward(scaled)
                self.on_after_backward()
            else:
                self.manual_backward(scaled)
        if last:
            if dp is not None:  # noised per-sample gradients replace the batch gradient
                dp.privatize(size, keep_rest=self.sample_free_loss_terms)
            if direct:
                self.on_before_optimizer_step(opt)
            opt.step()
        return loss

    def _plain_steps(self) -> bool:
        """Whether a step may call the module's hooks directly instead of through Lightning: the
        precision plugin is the plain fp32 one (no scaling, casting or unscaling to honour) and no
        callback implements a per-step hook. Then ``manual_backward`` and ``LightningOptimizer.step``
        would do exactly ``on_before_backward``, ``backward``, ``on_after_backward``,
        ``on_before_optimizer_step`` and the optimizer's step; their dispatch machinery (about 20
        attribute writes per hook) costs more than a small model's step."""
        trainer = self.trainer
        if type(trainer.precision_plugin) is not Precision:
            return False
        return not any(is_overridden(hook, cb, L.Callback) for cb in trainer.callbacks for hook in _STEP_HOOKS)

    def training_step(self, batch, batch_idx):
        """Accepts three shapes of ``batch``: a ``(x, y)`` mini-batch (a plain DataLoader); a list
        of ``(x, y)`` mini-batches (one local epoch); or any other iterable of such lists (a
        client's whole local update, e.g. :class:`flcore.local.LocalEpochs`: the federated loop's
        shape, one Lightning step per client). Each local epoch starts with
        :meth:`on_local_epoch_start`. Returns the last mini-batch's loss."""
        if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], Tensor):
            epochs, moved = [[batch]], True
        elif isinstance(batch, list):
            epochs, moved = [batch], True
        else:
            epochs, moved = batch, False
        optimizer = self.optimizers()
        loss = None
        for epoch in epochs:
            self._recording = not isinstance(epoch, EarlierEpoch)
            if not moved and epoch and epoch[0][0].device != self.device:
                epoch = self.trainer.strategy.batch_to_device(epoch)
            self.on_local_epoch_start()
            k, n = self.accumulate_grad_batches, len(epoch)
            for i, mb in enumerate(epoch):
                start = i - i % k
                group = min(k, n - start)
                loss = self.local_step(mb, optimizer, first=i == start, last=i == start + group - 1, scale=1.0 / group)
        return loss

    def on_local_epoch_start(self) -> None:
        """Start of a local epoch (inside the training step when one step carries several local
        epochs; the train metrics describe the last local epoch). Subclasses with per-epoch state
        (FedGen's label counts) call ``super()``."""
        self._epoch_records = []
        self._train_metrics = {}

    def on_before_optimizer_step(self, optimizer) -> None:
        """Gradient clipping (``set_local_options``); runs after AMP unscaling. Subclasses that edit
        gradients here call ``super()`` last, so clipping sees the edited gradients (as Lightning
        clips after this hook under automatic optimization)."""
        if self.gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val,
                                gradient_clip_algorithm=self.gradient_clip_algorithm)

    def validation_step(self, batch, batch_idx):
        self._common_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._common_step(batch, "test")

    def on_train_start(self) -> None:
        self._direct = self._plain_steps()
        if self.local_dp is not None:
            self.local_dp.attach(self.net, self.optimizers().optimizer)

    def on_train_epoch_start(self) -> None:
        self.on_local_epoch_start()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self):
        return self.optimizer_factory(self.net.parameters())
