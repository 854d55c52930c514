"""Tests of the evaluation figure."""

import os

import numpy as np
import pytest

from tests.evaluate_test import ITEMS, PAIRS_ITEM, PAIRS_QUERY, QUERIES
from tfr_ssl import eval_plot, evaluate


def test_plot_file(tmp_path):
  count = np.array([5, 1, 0])
  metrics = evaluate.evaluate_embeddings(
    QUERIES, ITEMS, PAIRS_QUERY, PAIRS_ITEM, item_train_count=count, ks=(1, 2)
  )
  png = tmp_path / "eval" / "recall_by_decile.png"
  eval_plot.plot_recall_by_decile({"a": metrics, "b": metrics}, str(png), k=2)
  with open(png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.path.getsize(png) > 1000
  # Only the final file remains: the temporary was renamed away.
  assert os.listdir(tmp_path / "eval") == ["recall_by_decile.png"]
  with pytest.raises(ValueError, match="recall@50"):
    eval_plot.plot_recall_by_decile({"a": metrics}, str(png), k=50)
