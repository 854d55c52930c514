"""The evaluation figure: Recall@K by popularity decile and by slice.

Presentation only: the numbers come from `evaluate.py` (a metrics dict with
the deciles and slices of `eval_slices.py`); this module draws them for one
or several runs, side by side, into `WORKDIR/eval/recall_by_decile.png`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from tfr_ssl import atomic
from tfr_ssl.evaluation.slices import NUM_DECILES, SLICES


def plot_recall_by_decile(
  runs: Mapping[str, Mapping[str, Any]], path: str, k: int = 10
) -> None:
  """Draws Recall@k by popularity decile (and by slice) for several runs.

  Left panel: one line per run over deciles 0 (rarest) .. 9 (most frequent).
  Right panel: grouped bars of head / tail / cold Recall@k. The PNG is
  written to a temporary sibling and renamed into place.

  Args:
    runs: Run label -> metrics dict from `evaluate_embeddings` (with slices).
    path: Destination PNG.
    k: The cut-off to plot; every run must have reported it.

  Raises:
    ValueError: no runs, or a run without deciles or without Recall@k.
  """
  if not runs:
    raise ValueError("plot_recall_by_decile needs at least one run.")
  key = f"recall@{k}"
  for label, metrics in runs.items():
    if "deciles" not in metrics or key not in metrics:
      raise ValueError(
        f"Run {label!r} has no deciles or no {key}; evaluate it with "
        f"item_train_count and k={k} in ks."
      )

  import matplotlib

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  figure, (by_decile, by_slice) = plt.subplots(
    1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]}
  )
  width = 0.8 / len(runs)
  for i, (label, metrics) in enumerate(runs.items()):
    deciles = [row["decile"] for row in metrics["deciles"]]
    recalls = [_nan_if_none(row[key]) for row in metrics["deciles"]]
    by_decile.plot(deciles, recalls, marker="o", label=label)
    slice_recalls = [_nan_if_none(metrics["slices"][s][key]) for s in SLICES]
    offsets = np.arange(len(SLICES)) + (i - (len(runs) - 1) / 2) * width
    by_slice.bar(offsets, slice_recalls, width=width, label=label)
  by_decile.set_xticks(range(NUM_DECILES))
  by_decile.set_xlabel("item popularity decile (0 = rarest)")
  by_decile.set_ylabel(f"Recall@{k}")
  by_decile.set_title(f"Recall@{k} by popularity decile")
  by_decile.grid(alpha=0.3)
  by_decile.legend()
  by_slice.set_xticks(np.arange(len(SLICES)), SLICES)
  by_slice.set_title(f"Recall@{k} by slice")
  by_slice.grid(axis="y", alpha=0.3)
  figure.tight_layout()
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=100)
  plt.close(figure)
  atomic.write_bytes(path, buffer.getvalue())


def _nan_if_none(value):
  return math.nan if value is None else value
