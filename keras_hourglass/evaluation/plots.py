"""FROC plots and mark overlays (matplotlib, Agg backend; no TensorFlow).

- `plot_froc(result, path)`: sensitivity vs FPI on a log axis (0.125 ... 8),
  the bootstrap 95% band, the 8 operating points marked and the 4.8 FPI
  point annotated.
- `plot_froc_curves({name: result}, path)`: several curves in one plot (the
  ablation).
- `plot_overlay(record, path)`: an image with malignant boxes (red), benign
  (yellow) and high-risk (orange) boxes and the marks kept at an operating
  threshold, as circles whose size grows with the score (green: on a
  malignant finding, cyan: false mark), like Figure 1 of the paper.

Curves are drawn with the same reading rule as the reported numbers (the
result's `interpolation`, by default a step function), evaluated on a dense
log-spaced FPI grid.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from keras_hourglass import storage  # noqa: E402
from keras_hourglass.contract import EVALUATION_POSITIVE_LABELS  # noqa: E402
from keras_hourglass.evaluation.froc import (  # noqa: E402
    EXTRA_HIT,
    FPI_POINTS,
    HIT,
    FrocResult,
    ImageRecord,
    fpi_key,
    match_image,
    sensitivity_at,
)

X_LIMITS = (0.1, 10.0)
BOX_COLOURS = {"malignant": "red", "high_risk": "orange", "benign": "yellow"}
OTHER_BOX_COLOUR = "white"


def _as_json(result: FrocResult | Mapping[str, Any]) -> Mapping[str, Any]:
    return result.to_json(max_curve_points=None) if isinstance(result, FrocResult) else result


def curve_arrays(result: FrocResult | Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The operating points of a result (a `FrocResult` or its froc.json dict).

    Returns:
        `(fpi, sensitivity)` arrays in descending threshold order; the
        sensitivity is NaN where undefined.
    """
    if isinstance(result, FrocResult):
        return result.curve_fpi, result.curve_sensitivity
    points = result.get("curve") or []
    fpi = np.asarray([p["fpi"] for p in points], dtype=np.float64)
    sens = np.asarray([np.nan if p["sensitivity"] is None else p["sensitivity"] for p in points], dtype=np.float64)
    return fpi, sens


def dense_curve(result: FrocResult | Mapping[str, Any], num: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivity on a log-spaced FPI grid spanning the plot, read like the reported numbers.

    Returns:
        `(grid, sensitivity)`; sensitivity is all NaN when undefined.
    """
    data = _as_json(result)
    grid = np.logspace(np.log10(X_LIMITS[0]), np.log10(X_LIMITS[1]), num)
    if data.get("max_sensitivity") is None:
        return grid, np.full(num, np.nan)
    fpi, sens = curve_arrays(result)
    interpolation = (data.get("settings") or {}).get("interpolation", "step")
    return grid, sensitivity_at(fpi, sens, grid, interpolation)


def _setup_axes(ax, title: str | None) -> None:
    ax.set_xscale("log")
    ax.set_xlim(*X_LIMITS)
    ax.set_ylim(0.0, 1.02)
    ax.set_xticks(list(FPI_POINTS))
    ax.set_xticklabels([fpi_key(f) for f in FPI_POINTS])
    ax.minorticks_off()
    ax.set_xlabel("false marks per image (FPI)")
    ax.set_ylabel("sensitivity (malignant findings)")
    ax.grid(True, which="major", alpha=0.3)
    if title:
        ax.set_title(title)


def _band(ax, data: Mapping[str, Any], colour, label: str | None = "95% CI (bootstrap over patients)") -> None:
    band = data.get("ci95_band")
    if not band:
        return
    fpi = np.asarray(band["fpi"], dtype=np.float64)
    lower = np.asarray([np.nan if v is None else v for v in band["lower"]], dtype=np.float64)
    upper = np.asarray([np.nan if v is None else v for v in band["upper"]], dtype=np.float64)
    ok = ~(np.isnan(lower) | np.isnan(upper))
    if ok.any():
        ax.fill_between(fpi[ok], lower[ok], upper[ok], color=colour, alpha=0.2, linewidth=0, label=label)


def plot_froc(
    result: FrocResult | Mapping[str, Any],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    annotate_fpi: float = 4.8,
) -> str:
    """Draws one FROC curve with its CI band and operating points.

    Args:
        result: a `FrocResult` or a froc.json dict.
        path: output PNG.
        title: plot title (default: a summary line).
        annotate_fpi: the FPI point whose value is written on the plot.

    Returns:
        The path written.
    """
    data = _as_json(result)
    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    n = data.get("num_images")
    default_title = f"FROC: {n} images, {data.get('num_malignant_findings')} malignant findings"
    _setup_axes(ax, title or default_title)
    if data.get("max_sensitivity") is None:
        ax.text(0.5, 0.5, data.get("warning") or "sensitivity undefined", transform=ax.transAxes,
                ha="center", va="center", wrap=True)
    else:
        _band(ax, data, "tab:blue")
        grid, sens = dense_curve(result)
        ax.plot(grid, sens, color="tab:blue", linewidth=1.8, label="FROC")
        points = [(float(k), v) for k, v in data["sensitivity_at_fpi"].items() if v is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], "o", color="tab:blue", markersize=5,
                label="operating points")
        key = fpi_key(annotate_fpi)
        value = data["sensitivity_at_fpi"].get(key)
        if value is not None:
            ci = (data.get("ci95") or {}).get(key)
            text = f"{value:.3f} at {key} FPI" + (f"\n95% CI [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
            ax.plot([annotate_fpi], [value], "o", color="tab:red", markersize=8, zorder=5)
            ax.annotate(text, (annotate_fpi, value), xytext=(-110, -40 if value > 0.5 else 30),
                        textcoords="offset points", arrowprops={"arrowstyle": "->", "color": "tab:red"},
                        fontsize=9, color="tab:red")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with storage.replacing(path, keep_suffix=True) as tmp:  # matplotlib writes local files
        fig.savefig(tmp)
    plt.close(fig)
    return os.fspath(path)


def plot_froc_curves(
    results: Mapping[str, FrocResult | Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    title: str | None = "FROC",
    bands: bool = True,
) -> str:
    """Draws several FROC curves in one plot (e.g. the loss ablation).

    Args:
        results: legend name -> `FrocResult` or froc.json dict.
        path: output PNG.
        title: plot title.
        bands: draw each curve's bootstrap 95% band.

    Returns:
        The path written.
    """
    fig, ax = plt.subplots(figsize=(7.5, 5.5), dpi=120)
    _setup_axes(ax, title)
    colours = plt.get_cmap("tab10")
    for i, (name, result) in enumerate(results.items()):
        data = _as_json(result)
        colour = colours(i % 10)
        if data.get("max_sensitivity") is None:
            ax.plot([], [], color=colour, label=f"{name} (undefined: no malignant finding)")
            continue
        if bands:
            _band(ax, data, colour, label=None)
        grid, sens = dense_curve(result)
        at = data["sensitivity_at_fpi"].get("4.8")
        label = f"{name} ({at:.2f} at 4.8 FPI)" if at is not None else name
        ax.plot(grid, sens, color=colour, linewidth=1.6, label=label)
        points = [(float(k), v) for k, v in data["sensitivity_at_fpi"].items() if v is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], "o", color=colour, markersize=3.5)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with storage.replacing(path, keep_suffix=True) as tmp:  # matplotlib writes local files
        fig.savefig(tmp)
    plt.close(fig)
    return os.fspath(path)


def plot_overlay(
    record: ImageRecord,
    path: str | os.PathLike,
    *,
    image: np.ndarray | None = None,
    threshold: float | None = None,
    max_marks: int = 30,
    positive_labels: Sequence[str] = EVALUATION_POSITIVE_LABELS,
    title: str | None = None,
) -> str:
    """Draws an image with its findings and marks.

    Args:
        record: marks and findings (image frame); a `PredictedImage` brings
            its own pixels in `record.image`.
        path: output PNG.
        image: `[H, W]` pixels (overrides `record.image`).
        threshold: draw only marks with `score >= threshold` (an operating
            point of the FROC); None draws the best `max_marks`.
        max_marks: at most this many marks (best first).
        positive_labels: labels drawn and matched as evaluation positives.
        title: plot title (default: image id and counts).

    Returns:
        The path written.
    """
    pixels = image if image is not None else getattr(record, "image", None)
    match = match_image(record, positive_labels=positive_labels)
    marks = record.marks
    order = np.argsort(-marks[:, 2], kind="stable")
    if threshold is not None:
        order = order[marks[order, 2] >= threshold]
    order = order[:max_marks]
    height = getattr(record, "height", 0) or (pixels.shape[0] if pixels is not None else None)
    width = getattr(record, "width", 0) or (pixels.shape[1] if pixels is not None else None)
    if height is None:
        extent = np.concatenate([record.boxes[:, 2:4].reshape(-1, 2), marks[:, :2]])
        height, width = (int(np.ceil(extent.max(axis=0).max())) + 1,) * 2 if extent.size else (64, 64)

    aspect = width / max(height, 1)
    fig, ax = plt.subplots(figsize=(max(3.0, 6.0 * aspect), 6.0), dpi=120)
    if pixels is not None:
        ax.imshow(pixels, cmap="gray", extent=(0, pixels.shape[1], pixels.shape[0], 0), interpolation="nearest")
    else:
        ax.set_facecolor("black")
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    for (y0, x0, y1, x1), label in zip(record.boxes, record.labels):
        colour = BOX_COLOURS.get(label, OTHER_BOX_COLOUR)
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.5))
    if order.size:
        scores = marks[order, 2]
        lo, hi = float(scores.min()), float(scores.max())
        size = 30 + 170 * ((scores - lo) / (hi - lo) if hi > lo else np.ones_like(scores))
        colour = ["lime" if match.status[m] in (HIT, EXTRA_HIT) else "cyan" for m in order]
        ax.scatter(marks[order, 1], marks[order, 0], s=size, facecolors="none", edgecolors=colour, linewidths=1.2)
    ax.set_xticks([])
    ax.set_yticks([])
    on_positive = int(sum(match.status[m] in (HIT, EXTRA_HIT) for m in order))
    default_title = (
        f"{record.image_id[:12]}: {on_positive} on malignant, {order.size - on_positive} false"
        + (f" (score >= {threshold:.3g})" if threshold is not None else "")
    )
    ax.set_title(title or default_title, fontsize=9)
    handles = [plt.Line2D([], [], color=c, linewidth=2, label=name) for name, c in BOX_COLOURS.items()]
    handles += [
        plt.Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor="lime", label="on malignant"),
        plt.Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor="cyan", label="false mark"),
    ]
    ax.legend(handles=handles, loc="lower right", fontsize=6, framealpha=0.6)
    fig.tight_layout()
    with storage.replacing(path, keep_suffix=True) as tmp:  # matplotlib writes local files
        fig.savefig(tmp)
    plt.close(fig)
    return os.fspath(path)
