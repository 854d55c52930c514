"""Tests of the text a run's figures are shown in."""

import pytest

from tests.evaluate_test import SLICE_COUNT, SLICED, sliced_metrics
from tfr_ssl import evaluate, run_report


def test_format_metrics_lists_overall_slices_and_deciles():
  text = run_report.format_metrics(sliced_metrics())
  assert "3 pairs, 2 queries" in text
  assert "recall@1 0.3333" in text and "map@2 0.7500" in text
  assert "cold (1 items, 0 pairs): recall@1 n/a" in text
  assert "by decile" in text
  assert "model" not in text  # no baseline, no labels


def test_format_metrics_prints_the_baseline_beside_the_model():
  metrics = sliced_metrics()
  metrics["excluded"] = ["train", "validation"]
  # Ranking i0, i1, i2; q0 masks i2: (q0, i0) at 0, (q0, i1) at 1;
  # q1: (q1, i1) at 1. Recall@1 = 1/3, MAP@1 = (1 + 0) / 2.
  metrics["baseline"] = {
    "most_popular": evaluate.evaluate_most_popular(SLICE_COUNT, **SLICED)
  }
  assert metrics["baseline"]["most_popular"]["map@1"] == pytest.approx(0.5)
  text = run_report.format_metrics(metrics).splitlines()
  assert text[0] == "3 pairs, 2 queries (excluded: train, validation)"
  assert text[1].startswith("model         recall@1 0.3333")
  assert text[2].startswith("most popular  recall@1 0.3333")
  assert text[3].startswith("head (1 items, 1 pairs): recall@1 1.0000")
  assert "| most popular: recall@1 1.0000  recall@2 1.0000" in text[3]
  assert any(line.startswith("most popular recall@1 by") for line in text)
