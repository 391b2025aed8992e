"""Evaluation pictures: per-attribute balanced accuracy per system, and confusion matrices."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from model.labels import CELEBA_ATTRIBUTES


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def attribute_bars(systems: dict[str, dict[str, Any]], path: Path) -> None:
    """Grouped horizontal bars: balanced accuracy of each attribute, one colour per system (0.5 = chance)."""
    plt = _pyplot()
    names = list(systems)
    fig, ax = plt.subplots(figsize=(9, 13), dpi=80)
    height = 0.8 / len(names)
    y = np.arange(len(CELEBA_ATTRIBUTES))
    for k, name in enumerate(names):
        per = systems[name]["metrics"]["per_attribute"]
        ax.barh(y + k * height, [per[a]["balanced_accuracy"] for a in CELEBA_ATTRIBUTES], height, label=name)
    ax.axvline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_yticks(y + height * (len(names) - 1) / 2, CELEBA_ATTRIBUTES, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("balanced accuracy (0.5 = chance)")
    ax.set_title("Attributes: balanced accuracy per attribute")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def confusion_png(confusion: dict[str, Any], title: str, path: Path) -> None:
    """Rows truth, columns prediction (plus unread); each row normalised, counts written in the cells."""
    plt = _pyplot()
    matrix = np.asarray(confusion["matrix"], dtype=float)
    labels = confusion["labels"]
    rows = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.1 * len(labels) + 3, 0.9 * len(labels) + 2), dpi=80)
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if rows[i, j] > 0.6 else "black")
    ax.set_xticks(range(matrix.shape[1]), [*labels, "unread"], rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def confusion_rows(confusion: dict[str, Any], path: Path) -> None:
    """One CSV row per face (actual, predicted) for DVC's confusion template."""
    labels = [*confusion["labels"], "unread"]
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["actual", "predicted"])
        for i, row in enumerate(confusion["matrix"]):
            for j, count in enumerate(row):
                out.writerows([[labels[i], labels[j]]] * count)


def write_task_plots(result: dict[str, Any], folder: Path) -> None:
    """evaluate@<task>'s plots: balanced accuracy per attribute, or FaceInsight's confusion matrices (PNG, CSV)."""
    folder.mkdir(parents=True, exist_ok=True)
    systems = result["systems"]
    if result["task"] == "attributes":
        attribute_bars(systems, folder / "balanced_accuracy.png")
        return
    best = "faceinsight" if "faceinsight" in systems else next(iter(systems))
    for target, metrics in systems[best]["metrics"].items():
        if "confusion" in metrics:
            confusion_png(metrics["confusion"], f"{target} ({best})", folder / f"{target}_confusion.png")
            confusion_rows(metrics["confusion"], folder / f"{target}_confusion.csv")
