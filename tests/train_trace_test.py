"""The training loop's step function is traced once per phase, and what it
computes is what the same code computes eagerly, step for step."""

import warnings

import numpy as np
import pytest
import tensorflow as tf

import tfr_ssl  # noqa: F401
from tests.workflow_test import tiny_config
from tfr_ssl.model import two_tower
from tfr_ssl.training import train

# A run with every event of the loop: 2 SSL-only pretraining steps (their
# own phase, so their own step function), then 2 epochs of 3 joint steps;
# a log every step (grad norms on the probe batch), a checkpoint every 2
# steps and at epoch ends, validation at epoch ends. 8 steps, 8 calls.
RUN = {
  "train.schedule": "pretrain",
  "train.pretrain_steps": 2,
  "train.epochs": 2,
  "train.steps_per_epoch": 3,
  "train.log_every": 1,
  "train.checkpoint_every": 2,
  "train.validation_examples": 100,
}


def _run(tmp_path, name, monkeypatch):
  """Trains RUN in tmp_path/name; returns (summary, per-step train logs,
  the phase of each trace of the model's train step, the step functions)."""
  traces, step_fns, logs = [], [], {}
  train_step = two_tower.TwoTowerModel.train_step
  step_fn = train._train_step_fn
  scalars = train._Run._scalars

  def traced_train_step(model, batch):
    # Python runs only while a function is traced (or eagerly).
    traces.append(model.phase)
    return train_step(model, batch)

  def recorded_step_fn(*args):
    step_fns.append(step_fn(*args))
    return step_fns[-1]

  def recorded_scalars(run, prefix, step, values):
    if prefix == "train":
      logs[step] = dict(values)
    scalars(run, prefix, step, values)

  with monkeypatch.context() as patch:
    patch.setattr(two_tower.TwoTowerModel, "train_step", traced_train_step)
    patch.setattr(train, "_train_step_fn", recorded_step_fn)
    patch.setattr(train._Run, "_scalars", recorded_scalars)
    config = tiny_config(str(tmp_path / "cache"), **RUN)
    summary = train.train_and_evaluate(config, str(tmp_path / name))
  return summary, logs, traces, step_fns


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The run compiled, and the same run with every tf.function eager."""
  tmp_path = tmp_path_factory.mktemp("trace")
  with pytest.MonkeyPatch.context() as monkeypatch:
    compiled = _run(tmp_path, "compiled", monkeypatch)
    tf.config.run_functions_eagerly(True)
    try:
      with warnings.catch_warnings():
        # tf.data still traces its own functions, and says so.
        warnings.filterwarnings("ignore", "Even though the", UserWarning)
        eager = _run(tmp_path, "eager", monkeypatch)
    finally:
      tf.config.run_functions_eagerly(False)
  return compiled, eager


def test_each_phase_is_traced_once_across_logs_checkpoints_and_epochs(runs):
  (summary, logs, traces, step_fns), _ = runs
  assert summary["steps"] == 8
  assert [h["epoch"] for h in summary["validation"]] == [1, 2]
  assert sorted(logs) == list(range(1, 9))
  # One trace per phase: the optimizer's variables exist before the first
  # call (a first trace that creates variables is followed by a second).
  assert traces == ["ssl_only", "joint"]
  assert [fn.experimental_get_tracing_count() for fn in step_fns] == [1, 1]


def test_the_losses_are_those_of_the_loop_traced_with_autograph(runs):
  (_, logs, _, _), _ = runs
  # Recorded from the loop before its step was traced once and without
  # autograph (commit 712ad7d: traces ["ssl_only", "ssl_only", "joint"]),
  # on this config; equal to the last bit there, so the tolerance covers
  # only another machine's float rounding.
  before = [5.168559, 4.504265, 10.485895, 9.330250, 8.253517, 7.792933]
  before += [7.392951, 7.414800]
  losses = [logs[step]["loss"] for step in sorted(logs)]
  np.testing.assert_allclose(losses, before, rtol=1e-4)


def test_the_compiled_loop_computes_what_the_eager_loop_computes(runs):
  (summary, logs, _, _), (eager_summary, eager_logs, eager_traces, _) = runs
  # Eagerly the model's step runs once per step: 8 calls.
  assert len(eager_traces) == 8
  assert sorted(eager_logs) == sorted(logs)
  for step in sorted(logs):
    assert logs[step].keys() == eager_logs[step].keys()
    for name, value in logs[step].items():
      # Graph rewrites reorder float sums: equal to float32 rounding.
      np.testing.assert_allclose(
        value, eager_logs[step][name], rtol=1e-4, atol=1e-6, err_msg=name
      )
  for entry, eager_entry in zip(
    summary["validation"], eager_summary["validation"], strict=True
  ):
    assert entry.keys() == eager_entry.keys()
    for name in entry:
      np.testing.assert_allclose(entry[name], eager_entry[name], atol=1e-6)
