"""Tests of the evaluation figure."""

import os

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from matplotlib import colors, image
from matplotlib import pyplot as plt

from tests.evaluate_test import EXCLUDE, ITEMS, PAIRS_ITEM, PAIRS_QUERY, QUERIES
from tfr_ssl.evaluation import metrics as evaluate
from tfr_ssl.evaluation import plot as eval_plot

# Training counts [5, 1, 0]: popularity ranks i2 (0), i1 (1), i0 (2), and
# decile = rank * 10 // 3: i2 -> 0, i1 -> 3, i0 -> 6. Only i1 and i0 are
# held out, so deciles 3 and 6 are the only ones with a Recall@2.
COUNT = np.array([5, 1, 0])


def _metrics(exclude=None):
  return evaluate.evaluate_embeddings(
    QUERIES,
    ITEMS,
    PAIRS_QUERY,
    PAIRS_ITEM,
    item_train_count=COUNT,
    exclude=exclude,
    ks=(1, 2),
  )


def _draw(monkeypatch, runs, path, k=2):
  """Draws through the module's API; returns the figure it drew."""
  drawn = []
  close = plt.close
  monkeypatch.setattr(plt, "close", lambda f: drawn.append(f) or close(f))
  eval_plot.plot_recall_by_decile(runs, path, k=k)
  (figure,) = drawn
  return figure


def test_figure_shows_each_runs_recall_by_decile_and_slice(
  tmp_path, monkeypatch
):
  # Run "a", no exclusion (orders: q0 i2, i0, i1; q1 i2, i1, i0):
  #   decile 6 (i0): (q0, i0) at position 1 -> Recall@2 = 1.
  #   decile 3 (i1): (q0, i1) at 2 (miss), (q1, i1) at 1 (hit) -> 1/2.
  # Run "b" excludes q0's training item i2 (q0: i0, i1, i2), so (q0, i1)
  # moves to position 1: decile 3 -> 1, decile 6 stays 1.
  # Slices: i0 and i1 are tail (i2, count 0, is cold with no pairs; no
  # head item has pairs): tail Recall@2 = a 2/3, b 1; head and cold none.
  runs = {"a": _metrics(), "b": _metrics(EXCLUDE)}
  png = tmp_path / "eval" / "recall_by_decile.png"
  figure = _draw(monkeypatch, runs, str(png))

  by_decile, by_slice = figure.axes
  nan = np.nan
  expected = {
    "a": [nan, nan, nan, 0.5, nan, nan, 1.0, nan, nan, nan],
    "b": [nan, nan, nan, 1.0, nan, nan, 1.0, nan, nan, nan],
  }
  lines = by_decile.get_lines()
  assert [line.get_label() for line in lines] == ["a", "b"]
  for line in lines:
    np.testing.assert_array_equal(line.get_xdata(), np.arange(10))
    np.testing.assert_allclose(line.get_ydata(), expected[line.get_label()])
  assert by_decile.get_ylabel() == "Recall@2"
  # Bars in slice order head, tail, cold; run a left of run b (width 0.4).
  assert [c.get_label() for c in by_slice.containers] == ["a", "b"]
  bars = by_slice.patches
  heights = [b.get_height() for b in bars]
  np.testing.assert_allclose(heights, [nan, 2 / 3, nan, nan, 1.0, nan])
  centres = [b.get_x() + b.get_width() / 2 for b in bars]
  np.testing.assert_allclose(centres, [-0.2, 0.8, 1.8, 0.2, 1.2, 2.2])
  assert [t.get_text() for t in by_slice.get_xticklabels()] == [
    "head",
    "tail",
    "cold",
  ]

  # The PNG is that figure: 11 x 4 inches at 100 dpi, and each run's colour
  # (the first two of the default cycle) is painted, on a white page.
  pixels = image.imread(str(png))
  assert pixels.shape == (400, 1100, 4)
  rgb = pixels[..., :3]
  assert np.mean(np.all(rgb == 1.0, axis=-1)) > 0.5
  for colour in ("C0", "C1"):
    target = np.array(colors.to_rgb(colour), np.float32)
    assert np.any(np.all(np.abs(rgb - target) < 1 / 255, axis=-1)), colour
  # Only the final file remains: the temporary was renamed away.
  assert os.listdir(tmp_path / "eval") == ["recall_by_decile.png"]


def test_one_run_paints_one_colour(tmp_path, monkeypatch):
  png = tmp_path / "one.png"
  figure = _draw(monkeypatch, {"a": _metrics()}, str(png))
  assert len(figure.axes[0].get_lines()) == 1
  rgb = image.imread(str(png))[..., :3]
  second = np.array(colors.to_rgb("C1"), np.float32)
  assert not np.any(np.all(np.abs(rgb - second) < 1 / 255, axis=-1))


def test_a_cut_off_the_runs_lack_is_refused(tmp_path):
  with pytest.raises(ValueError, match="recall@50"):
    eval_plot.plot_recall_by_decile(
      {"a": _metrics()}, str(tmp_path / "p.png"), k=50
    )
  assert not os.path.exists(tmp_path / "p.png")
