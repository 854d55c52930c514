"""Tests of the training loop: model selection (best epoch, early stop) and
its edges (batches the data cannot fill, non-finite values, progress)."""

import json
import logging
import os
import re

import numpy as np
import pytest
import tensorflow as tf

import tfr_ssl  # noqa: F401
from tests.workflow_test import tiny_config
from tfr_ssl import workflow
from tfr_ssl.training import train, workdir


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


# ------------------------------------------------- the edges of the loop


def _quick(tmp_path, **overrides):
  """A tiny config with 3 steps per epoch (fast, and the loop's events are
  all exercised: logs, checkpoints and epoch ends)."""
  values = {
    "train.steps_per_epoch": 3,
    "train.log_every": 1,
    "train.checkpoint_every": 2,
    "train.validation_examples": 100,
  }
  values.update(overrides)
  return tiny_config(str(tmp_path / "cache"), **values)


@pytest.mark.parametrize(
  "field, value, message",
  [
    # tiny_config: 300 items; about 4,800 training interactions.
    ("ssl.batch_size", 301, "more than the 300 items of the corpus"),
    ("train.batch_size", 100_000, "usable training interactions"),
  ],
)
def test_a_batch_the_data_cannot_fill_is_refused_before_anything_is_written(
  tmp_path, field, value, message
):
  path = tmp_path / "work"
  with pytest.raises(workdir.ConfigError, match=message) as error:
    train.train_and_evaluate(_quick(tmp_path, **{field: value}), str(path))
  assert error.value.path == field
  assert not path.exists()


def _recalls(monkeypatch, *values):
  """Validation returns these recall@10 values, epoch after epoch."""
  values = iter(values)
  monkeypatch.setattr(
    train, "validate", lambda *args: {"recall@10": next(values)}
  )


def test_early_stopping_is_announced_only_when_it_stops_something(
  tmp_path, monkeypatch, caplog, capsys
):
  # Recall 0.3 then 0.2 with patience 1: the second epoch did not improve.
  # With 2 epochs it is the last one anyway: nothing stops, nothing said.
  _recalls(monkeypatch, 0.3, 0.2)
  caplog.set_level(logging.INFO)
  config = _quick(
    tmp_path, **{"train.epochs": 2, "train.early_stopping_patience": 1}
  )
  summary = train.train_and_evaluate(config, str(tmp_path / "two"))
  assert summary["steps"] == 6
  assert "has not improved" not in caplog.text
  # One bar per epoch, each headed by its epoch; no bar drawn at step 0
  # (it showed "0/N ... ETA: 0s" before any step was timed).
  out = capsys.readouterr().out
  assert out.index("Epoch 1/2\n") < out.index("Epoch 2/2\n")
  assert not re.search(r"(^|[\r\n\x08])\s*0/\d+ \[", out)
  # With 3 epochs the third is skipped, and that is said.
  _recalls(monkeypatch, 0.3, 0.2)
  caplog.clear()
  config = config.override({"train.epochs": 3})
  summary = train.train_and_evaluate(config, str(tmp_path / "three"))
  assert summary["steps"] == 6
  assert "has not improved for 1 epochs: stopping at step 6" in caplog.text


def _poison_at(monkeypatch, step):
  """Sets one weight to NaN when the loop syncs the optimizer at `step`."""
  sync = train._Run.sync_optimizer

  def poisoned(run):
    sync(run)
    if int(run.step) == step:
      variable = run.model.trainable_variables[0]
      variable.assign(tf.fill(variable.shape, float("nan")))

  monkeypatch.setattr(train._Run, "sync_optimizer", poisoned)


def _finite_checkpoints(path: str) -> list[str]:
  """Names of the checkpoints in path/checkpoints whose weights are all
  finite (fails on one that is not)."""
  names = []
  directory = os.path.join(path, "checkpoints")
  for prefix in tf.train.get_checkpoint_state(
    directory
  ).all_model_checkpoint_paths:
    reader = tf.train.load_checkpoint(prefix)
    for key, dtype in reader.get_variable_to_dtype_map().items():
      if key.startswith("model/") and dtype.is_floating:
        assert np.isfinite(reader.get_tensor(key)).all(), (prefix, key)
    names.append(os.path.basename(prefix))
  return names


def test_a_non_finite_weight_stops_training_and_is_never_saved(
  tmp_path, monkeypatch
):
  # Checkpoints every 2 steps and at the end of the 3-step epoch: ckpt-2 and
  # ckpt-3 are saved, then a weight turns NaN at step 4 (a checkpoint
  # step): training stops there, before saving it.
  _poison_at(monkeypatch, 4)
  path = str(tmp_path / "work")
  with pytest.raises(train.NonFiniteError) as error:
    train.train_and_evaluate(_quick(tmp_path), path)
  message = str(error.value)
  assert "stopped at step 4: a weight is not finite" in message
  assert "the last checkpoint (step 3) is kept" in message
  assert "\n" not in message
  assert _finite_checkpoints(path) == ["ckpt-2", "ckpt-3"]


def test_a_non_finite_loss_stops_training_at_its_step(tmp_path):
  # Adam moves every weight by about the learning rate per step: 1e30
  # overflows the logits at once, so the loss is not finite by step 2 at
  # the latest (step 1 is computed with the initial weights).
  path = str(tmp_path / "work")
  config = _quick(tmp_path, **{"train.learning_rate": 1e30})
  with pytest.raises(train.NonFiniteError, match="the loss is not finite"):
    train.train_and_evaluate(config, path)
  assert not os.path.exists(os.path.join(path, "checkpoints", "checkpoint"))
  assert not os.path.exists(os.path.join(path, "best"))


def test_a_checkpoint_with_non_finite_weights_is_not_resumed(
  tmp_path, monkeypatch
):
  # An older version saved what it had: let ckpt-4 hold a NaN weight.
  _poison_at(monkeypatch, 4)
  monkeypatch.setattr(train, "_finite_check", lambda model: lambda: True)
  path = str(tmp_path / "work")
  with pytest.raises(train.NonFiniteError, match="the loss is not finite"):
    train.train_and_evaluate(_quick(tmp_path), path)
  assert workdir.latest_step(path) == 4
  monkeypatch.undo()
  with pytest.raises(train.NonFiniteError, match="cannot resume") as error:
    train.train_and_evaluate(_quick(tmp_path), path)
  assert "ckpt-4" in str(error.value)
  assert workdir.latest_step(path) == 4
