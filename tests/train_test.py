"""Tests of the training loop's model selection: best epoch, early stop."""

import json
import os

import pytest

import tfr_ssl  # noqa: F401
from tests.workflow_test import tiny_config
from tfr_ssl import train, workflow


def _history(*recalls):
  return [
    {"epoch": i + 1, "step": 10 * (i + 1), "recall@10": r}
    for i, r in enumerate(recalls)
  ]


def test_best_entry_is_the_first_maximum():
  history = _history(0.1, 0.3, 0.2, 0.3)
  assert train._best_entry(history) is history[1]
  assert train._best_entry([]) is None


@pytest.mark.parametrize(
  "recalls, patience, stop",
  [
    ((0.1, 0.3, 0.2), 0, False),  # patience 0: never
    ((0.1, 0.3, 0.2), 1, True),  # one epoch without a gain
    ((0.1, 0.3, 0.2), 2, False),
    ((0.1, 0.3, 0.2, 0.25), 2, True),
    ((0.1, 0.2, 0.3), 1, False),  # still improving
    ((0.3,), 1, False),
  ],
)
def test_should_stop_after_patience_epochs_without_a_gain(
  recalls, patience, stop
):
  assert train._should_stop(_history(*recalls), patience) is stop


def test_export_uses_the_best_validation_epoch(tmp_path):
  config = tiny_config(
    str(tmp_path / "cache"), **{"train.epochs": 3, "train.log_every": 4}
  )
  workdir = str(tmp_path / "work")
  summary = train.train_and_evaluate(config, workdir)
  history = summary["validation"]
  assert [h["epoch"] for h in history] == [1, 2, 3]
  prefix, entry = train.best_checkpoint(workdir)
  assert entry == train._best_entry(history)
  assert train.trained_checkpoint(workdir) == prefix
  assert train.trained_checkpoint(workdir, "latest").endswith(
    f"ckpt-{history[-1]['step']}"
  )
  manifest = workflow.export_run(workdir)
  assert manifest["checkpoint"] == os.path.join("best", "model")
  # The loop logged how the two losses pull on the item tower.
  with open(os.path.join(workdir, "train_metrics.json")) as f:
    logs = json.load(f)["final_logs"]
  assert "main_loss" in logs
  events = os.listdir(os.path.join(workdir, "tensorboard"))
  assert events
