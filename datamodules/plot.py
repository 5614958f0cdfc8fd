"""Pictures of a partition, usable without flcore (matplotlib is an optional extra:
``pip install 'flcore[plot]'``).

    from datamodules import FashionMNIST, Dirichlet
    from datamodules.plot import plot_label_distribution
    dm = FashionMNIST(num_clients=100, partition=Dirichlet(0.1)); dm.setup()
    plot_label_distribution(dm.label_distribution()).savefig("partition.png")
"""

from __future__ import annotations

import numpy as np

__all__ = ["plot_label_distribution"]


def plot_label_distribution(counts: np.ndarray, title: str | None = None, max_clients: int = 100,
                            class_names: list[str] | None = None):
    """Bubble chart of a partition's label distribution (the FedCross paper's data-distribution
    figure): one column per client, one row per class, bubble area proportional to that client's
    number of samples of that class.

    Args:
        counts: ``(num_clients, num_classes)`` sample counts, e.g.
            :meth:`FederatedDataModule.label_distribution`.
        title: figure title.
        max_clients: draw at most this many clients (the first ones), to keep the figure legible.
        class_names: row labels (default ``0 .. C-1``).

    Returns:
        A ``matplotlib.figure.Figure`` (not shown; save or close it).

    Raises:
        ImportError: matplotlib is not installed (one line saying how to install it).
        ValueError: ``counts`` is not a 2-D array.
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ImportError("plot_label_distribution needs matplotlib: pip install 'flcore[plot]'") from None
    counts = np.asarray(counts)
    if counts.ndim != 2:
        raise ValueError(f"counts: must be (num_clients, num_classes), got shape {counts.shape}")
    counts = counts[:max_clients]
    n_clients, n_classes = counts.shape
    clients, classes = np.nonzero(counts)
    sizes = counts[clients, classes].astype(float)
    area = 300.0 * sizes / max(sizes.max(initial=1.0), 1.0)  # the largest bubble has area 300 pt^2
    fig = Figure(figsize=(max(6.0, 0.12 * n_clients + 2), max(3.0, 0.35 * n_classes + 1.5)))
    ax = fig.add_subplot()
    ax.scatter(clients, classes, s=area, alpha=0.6, edgecolors="none")
    ax.set_xlabel(f"client (first {n_clients})" if n_clients == max_clients else "client")
    ax.set_ylabel("class")
    ax.set_yticks(range(n_classes), class_names if class_names is not None else [str(c) for c in range(n_classes)])
    ax.set_xlim(-1, n_clients)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(-0.7, n_classes - 0.3)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig
