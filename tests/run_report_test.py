"""Tests of the text a run's figures are shown in."""

import pytest

from tests.evaluate_test import SLICE_COUNT, SLICED, sliced_metrics
from tfr_ssl import run_report
from tfr_ssl.evaluation import metrics as evaluate


def test_format_metrics_lists_overall_slices_and_deciles():
  text = run_report.format_metrics(sliced_metrics())
  assert "3 pairs, 2 queries" in text
  assert "recall@1 0.3333" in text and "map@2 0.7500" in text
  # One cold corpus item, none of the held-out items (i0, i1) is cold.
  assert "cold (1 corpus items, 0 held out, 0 pairs): recall@1 n/a" in text
  assert "cold = items in none" in text
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
  assert text[3].startswith("slices by training interactions: head = ")
  assert text[4].startswith(
    "head (1 corpus items, 1 held out, 1 pairs): recall@1 1.0000"
  )
  assert "| most popular: recall@1 1.0000  recall@2 1.0000" in text[4]
  assert any(line.startswith("most popular recall@1 by") for line in text)


def test_format_metrics_names_the_epoch_and_the_selection_rules():
  metrics = sliced_metrics()
  metrics.update(
    split="test",
    search="exact",
    evaluated={
      "checkpoint": "best/model",
      "selected_by": "best validation recall@10",
      "epoch": 3,
      "step": 1200,
    },
    protocol={
      "split": "test",
      "excluded": ["seed_item", "train", "validation"],
      "duplicates_removed": 2,
      "known_pairs": "dropped",
      "known_pairs_dropped": 413,
      "sampling": {
        "unit": "query",
        "max_pairs": 3,
        "seed": 0,
        "num_queries": 2,
        "of_queries": 9,
        "num_pairs": 3,
        "of_pairs": 12,
      },
      "train_counts": "training interactions that have a query item",
    },
  )
  text = run_report.format_metrics(metrics).splitlines()
  assert text[1] == (
    "evaluated: epoch 3 (step 1,200; best validation recall@10), "
    "test split, exact search"
  )
  assert text[2] == (
    "pairs: a sample of 2 of 9 queries with all their pairs (3 of 12 pairs; "
    "--max_pairs=3, seed 0); 2 repeated pairs scored once; 413 pairs equal "
    "to a train or validation pair dropped (neither ranked nor scored)"
  )
  assert (
    "slices by training interactions that have a query item: head" in text[4]
  )
  # A run that never validated: the latest checkpoint, by its step.
  metrics["evaluated"] = {
    "checkpoint": "checkpoints/ckpt-40",
    "selected_by": "latest checkpoint; the run never validated",
    "epoch": None,
    "step": 40,
  }
  assert (
    run_report.format_metrics(metrics)
    .splitlines()[1]
    .startswith(
      "evaluated: step 40 (latest checkpoint; the run never validated)"
    )
  )
