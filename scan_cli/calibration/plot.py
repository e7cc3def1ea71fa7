"""The accuracy-cost plot (``scan calibrate --plot``): the front, its operating points, the choice.

matplotlib is imported inside ``plot_front`` only.
"""

from __future__ import annotations

from pathlib import Path

from .. import files
from ..errors import UsageError
from .choose import CalibrationResult

# what matplotlib's Agg canvas writes (no matplotlib import needed to check a --plot path up front)
PLOT_FORMATS = ("png", "pdf", "svg", "svgz", "jpg", "jpeg", "tif", "tiff", "webp", "ps", "eps", "pgf", "raw", "rgba")


def check_plot_path(path) -> None:
    """A --plot file whose suffix matplotlib can write (none = PNG): checked before the search."""

    suffix = Path(path).suffix.lstrip(".").lower()
    if suffix and suffix not in PLOT_FORMATS:
        raise UsageError(f"--plot {path}: '.{suffix}' is not an image format: use .png, .svg or .pdf")


def plot_front(result_or_front, path, chosen=None, backbone_cost: float | None = None) -> Path:
    """Accuracy vs expected MACs (fraction of the backbone's) with the chosen point marked.

    ``chosen`` is (cost_fraction, accuracy); for a CalibrationResult it defaults to its own point.
    Uses matplotlib's Agg canvas directly (no global backend switch). The image is written
    atomically (``files.atomic_write``). Returns the path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    result = result_or_front if isinstance(result_or_front, CalibrationResult) else None
    front = result.front if result is not None else result_or_front
    if result is not None:
        backbone_cost = result.backbone_cost
        if chosen is None:
            chosen = (result.expected_cost / backbone_cost, result.val_accuracy)
    if backbone_cost is None:
        backbone_cost = float(front.costs[-1])
    points = front.points()
    fig = Figure(figsize=(6, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.step([p["cost"] / backbone_cost for p in points], [p["accuracy"] for p in points],
            where="post", color="tab:blue", lw=1.2, label="Pareto front (validation)")
    if result is not None:
        others = [p for p in result.pareto if p["label"] is None]
        ax.scatter([p["cost_fraction"] for p in others], [p["accuracy"] for p in others], s=18,
                   color="tab:gray", zorder=3, label="operating points")
        last = [p for p in result.pareto if p["label"] == "last exit only"]
        ax.scatter([p["cost_fraction"] for p in last], [p["accuracy"] for p in last], marker="s", s=30,
                   color="black", zorder=3, label="last exit only")
    if chosen is not None:
        ax.scatter([chosen[0]], [chosen[1]], marker="*", s=180, color="tab:red", zorder=4, label="chosen")
    ax.set_xlabel("expected MACs / backbone MACs")
    ax.set_ylabel("validation accuracy")
    if front.exact:
        kind = "exact"
    elif result is not None and "gap_bound_fraction" in result.method:
        kind = f"grid, chosen point within {result.method['gap_bound_fraction']:.3g} x backbone of optimal"
    else:
        kind = f"grid, up to {front.slack} answers lost to rounding"
    ax.set_title(f"accuracy vs cost, {front.n} images ({kind})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    path = Path(path)
    files.atomic_write(path, lambda tmp: fig.savefig(tmp, format=(path.suffix.lstrip(".") or "png"), dpi=120,
                                               bbox_inches="tight"))
    return path
