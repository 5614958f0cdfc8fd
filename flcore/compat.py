"""Every private Lightning and torch attribute flcore relies on, in one place.

flcore reuses one ``lightning.Trainer`` for thousands of local updates and loads weights by
copying into a net's own tensors; both need a few internals that neither library promises to
keep. They are read here and nowhere else, for the versions pinned in ``pyproject.toml``
(:data:`SUPPORTED`); ``tests/test_compat.py`` fails with one line naming the moved internal when
an upgrade changes them, instead of a run silently training the wrong number of epochs.
"""

from __future__ import annotations

import importlib
import typing

import lightning as L
import torch

__all__ = ["SUPPORTED", "rewind_fit_loop", "has_plain_loading", "precision_choices", "check_internals"]

SUPPORTED = {"lightning": (">=2.5", "<2.7"), "torch": ("==2.14.1",)}
"""The version ranges whose internals this module was checked against (as in ``pyproject.toml``)."""

_PLAIN_LOADERS = (torch.nn.Module._load_from_state_dict, torch.nn.modules.batchnorm._NormBase._load_from_state_dict)


def rewind_fit_loop(trainer: L.Trainer, max_epochs: int | None = None) -> None:
    """Reset ``trainer``'s fit-loop progress (epochs, batches, optimizer steps, the count of
    batches that stepped) so that the next ``fit`` runs ``max_epochs`` fresh epochs (unchanged
    when ``None``): how one Trainer serves every local update. Lightning keeps these counters
    across fits and has no public reset."""
    loop = trainer.fit_loop
    if max_epochs is not None:
        loop.max_epochs = max_epochs
    loop.epoch_progress.reset()
    loop.epoch_loop.batch_progress.reset()
    loop.epoch_loop.automatic_optimization.optim_progress.reset()
    loop.epoch_loop.manual_optimization.optim_step_progress.reset()
    loop.epoch_loop._batches_that_stepped = 0
    trainer.should_stop = False


def has_plain_loading(module: torch.nn.Module) -> bool:
    """Whether ``load_state_dict`` on ``module`` (not its children) only copies tensors: no load
    hooks and no ``_load_from_state_dict`` of its own other than BatchNorm's (which only fills a
    missing ``num_batches_tracked``)."""
    return not (module._load_state_dict_pre_hooks or module._load_state_dict_post_hooks
                or type(module)._load_from_state_dict not in _PLAIN_LOADERS)


def precision_choices() -> list[str]:
    """The values Lightning accepts for ``Trainer(precision=...)`` (its private literal type)."""
    literal = importlib.import_module("lightning.fabric.connector")._PRECISION_INPUT_STR
    return list(typing.get_args(literal))


def check_internals() -> None:
    """Touch every internal this module uses on a fresh Trainer and net.

    Raises:
        RuntimeError: one line naming the internal that moved and the supported versions.
    """
    where = f"supported: lightning {' '.join(SUPPORTED['lightning'])}, torch {SUPPORTED['torch'][0]}"
    try:
        trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, accelerator="cpu", max_epochs=1)
        rewind_fit_loop(trainer)
        if not hasattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped"):
            raise AttributeError("fit_loop.epoch_loop._batches_that_stepped")
        has_plain_loading(torch.nn.BatchNorm1d(2))
        if not precision_choices() or "32-true" not in precision_choices():
            raise AttributeError("lightning.fabric.connector._PRECISION_INPUT_STR has no '32-true'")
    except (AttributeError, ImportError, TypeError) as err:
        raise RuntimeError(f"flcore.compat: a Lightning/torch internal moved ({err}); "
                           f"installed lightning {L.__version__}, torch {torch.__version__}; {where}") from None
