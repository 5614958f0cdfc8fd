"""The model family of a run: one client module per architecture.

A homogeneous run is a family of one architecture, named ``None``: its one module is the
model as given. A heterogeneous-model run (FedIN paper, Sec. 3) builds one module per name of
``trainer.architectures`` from the model family's own constructor
(:meth:`lightning_modules.ClientModule.for_architecture`), each with its own reusable
LightningModule and optimizer settings.
"""

from __future__ import annotations

import lightning as L

__all__ = ["family_modules"]


def family_modules(model: L.LightningModule, names: list[str | None]) -> dict[str | None, L.LightningModule]:
    """``{architecture: module}`` in the order of ``names``.

    Args:
        model: the run's client module (a :class:`~lightning_modules.ClientModule` whose net is a
            model family when ``names`` holds architecture names).
        names: ``[None]`` for a homogeneous run, else the architecture names
            (:func:`flcore.checks.check_architectures` has checked them).

    Returns:
        ``{None: model}``, or ``{name: model.for_architecture(name)}`` for each name.
    """
    if names == [None]:
        return {None: model}
    return {name: model.for_architecture(name) for name in names}
