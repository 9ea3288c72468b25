"""PNG figures of runs: loss curves per method, and the memory–time–accuracy frontier."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from recede.runs.train import EpochRecord


@contextmanager
def figure(
    path: str | Path, nrows: int = 1, ncols: int = 1, layout_rect: tuple | None = None, **subplots: Any
) -> Iterator[tuple[Any, Any]]:
    """``(fig, axes)`` of ``plt.subplots(nrows, ncols, **subplots)`` on the Agg backend; on
    leaving the block the figure is laid out, written to ``path`` as a PNG and closed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, **subplots)
    try:
        yield fig, axes
        fig.tight_layout(**({"rect": layout_rect} if layout_rect else {}))
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def loss_curves(histories: Mapping[str, Sequence[EpochRecord]], path: str | Path, title: str = "") -> Path:
    """Training (solid) and test (dashed) loss per epoch, one colour per method, log scale."""
    path = Path(path)
    with figure(path, figsize=(6, 4)) as (fig, ax):
        for i, (label, history) in enumerate(histories.items()):
            epochs = [r.epoch + 1 for r in history]
            colour = f"C{i % 10}"
            ax.plot(epochs, [r.train_loss for r in history], color=colour, label=label)
            if all("loss" in r.test for r in history):
                ax.plot(epochs, [r.test["loss"] for r in history], color=colour, linestyle="--")
        ax.set(xlabel="epoch", ylabel="loss (solid train, dashed test)", yscale="log", title=title)
        ax.legend(fontsize=8)
    return path


def frontier(rows: Sequence[dict[str, Any]], path: str | Path, quality: str, title: str = "") -> Path:
    """Two panels: ``quality`` against memory ratio and against step-time ratio (both to BP).

    Dominated methods (``row["dominated"] == "yes"``) are drawn hollow; rows that are means over
    seeds (``"<column> sd"`` keys) get error bars of one sd.
    """
    path = Path(path)
    with figure(path, 1, 2, layout_rect=(0, 0.04, 1, 1), figsize=(10, 4), sharey=True) as (fig, axes):
        for ax, cost, name in (
            (axes[0], "memory ratio", "real peak memory / BP"),
            (axes[1], "time ratio", "time per step / BP (refreshes included)"),
        ):
            for i, row in enumerate(rows):
                colour = f"C{i % 10}"
                face = "none" if row.get("dominated") == "yes" else colour
                ax.scatter(row[cost], row[quality], s=60, edgecolors=colour, facecolors=face, zorder=3)
                if row.get(f"{cost} sd") or row.get(f"{quality} sd"):
                    ax.errorbar(
                        row[cost],
                        row[quality],
                        xerr=row.get(f"{cost} sd") or None,
                        yerr=row.get(f"{quality} sd") or None,
                        color=colour,
                        linewidth=1,
                        zorder=2,
                    )
                ax.annotate(
                    row["method"], (row[cost], row[quality]), fontsize=8, xytext=(4, 4), textcoords="offset points"
                )
            ax.set(xlabel=name, title=title if ax is axes[0] else "")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel(quality + (" (↑ better)" if "acc" in quality else " (↓ better)"))
        fig.text(
            0.5,
            0.01,
            f"hollow: dominated (another method is no worse on memory, time and {quality}, and better on one)",
            ha="center",
            fontsize=8,
        )
    return path
