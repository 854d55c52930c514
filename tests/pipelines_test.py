"""The binaries as a user runs them: crash recovery and error messages."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import tfr_ssl  # noqa: F401

# Minutes of training processes: started first (tests/conftest.py).
pytestmark = pytest.mark.long_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Data and model flags of a run that trains in seconds.
TINY_RUN = [
  "--num_items=300",
  "--num_users=200",
  "--num_interactions=6000",
  "--embedding_dim=16",
  "--query_layers=32",
  "--item_layers=32",
  "--output_dim=16",
  "--estimator_buckets=1024",
  "--ssl_batch_size=64",
  "--train_batch_size=128",
]
TINY = [
  *TINY_RUN,
  "--epochs=2",
  "--checkpoint_every=5",
  "--log_every=5",
  "--validation_examples=200",
]


def binary(name: str, *args: str) -> list[str]:
  return [sys.executable, "-m", f"pipelines.{name}", *args]


def run_binary(name: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
  return subprocess.run(
    binary(name, *args), capture_output=True, text=True, cwd=REPO, **kwargs
  )


def model_variables(workdir: str) -> dict[str, np.ndarray]:
  reader = tf.train.load_checkpoint(
    tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
  )
  return {
    key: reader.get_tensor(key)
    for key in reader.get_variable_to_shape_map()
    if key.startswith("model/")
  }


def test_training_killed_with_sigkill_resumes_to_the_same_model(tmp_path):
  flags = [f"--cache_dir={tmp_path / 'cache'}", *TINY]
  straight = tmp_path / "straight"
  crashed = tmp_path / "crashed"
  # The uninterrupted run and the one to be killed are independent, so they
  # run at the same time; each prepares the (same, seeded) data in a cache
  # of its own, so neither reads a cache the other is writing.
  with (
    open(tmp_path / "straight.log", "w") as straight_log,
    open(tmp_path / "first.log", "w") as log,
  ):
    reference = subprocess.Popen(
      binary(
        "train",
        f"--workdir={straight}",
        *TINY,
        f"--cache_dir={tmp_path / 'straight_cache'}",
      ),
      cwd=REPO,
      stdout=straight_log,
      stderr=subprocess.STDOUT,
    )
    process = subprocess.Popen(
      binary("train", f"--workdir={crashed}", *flags),
      cwd=REPO,
      stdout=log,
      stderr=log,
    )
    try:
      # Kill as soon as the first checkpoint exists: mid-run, no clean-up.
      marker = crashed / "checkpoints" / "checkpoint"
      deadline = time.monotonic() + 300
      while not marker.exists() and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
      process.send_signal(signal.SIGKILL)
      process.wait(timeout=30)
      reference.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
      for started in (reference, process):
        if started.poll() is None:
          started.kill()
          started.wait(timeout=30)
  assert process.returncode == -signal.SIGKILL
  assert reference.returncode == 0, (tmp_path / "straight.log").read_text()

  resumed = run_binary("train", f"--workdir={crashed}", *flags)
  assert resumed.returncode == 0, resumed.stderr
  assert "Resuming from" in resumed.stderr
  summary = json.loads(resumed.stdout[resumed.stdout.index("{") :])
  total = json.loads((straight / "train_metrics.json").read_text())["steps"]
  assert summary["steps"] == total
  assert 0 < summary["steps_this_run"] < total
  # The checkpoint holds the model, the optimizer, the step, the seeds and
  # the input iterator, so the resumed run sees the same batches and ends
  # where the uninterrupted one did (bit for bit on this machine).
  expected, actual = model_variables(straight), model_variables(crashed)
  assert expected.keys() == actual.keys()
  for key, value in expected.items():
    np.testing.assert_allclose(actual[key], value, atol=1e-5, err_msg=key)


@pytest.mark.parametrize(
  "name, args, message",
  [
    ("train", ["--workdir=w", "--masking=bogus"], "masking"),
    ("train", ["--workdir=w", "--ssl_temperature=x"], "ssl_temperature"),
    ("train", ["--workdir=w", "extra"], "Unexpected arguments"),
    ("evaluate", ["--workdir=/nonexistent/run"], "/nonexistent/run"),
    ("export", ["--workdir=/nonexistent/run"], "/nonexistent/run"),
    ("retrieve", ["--workdir=w", "--query=[1]"], "JSON object"),
    ("build_index", ["--workdir=w", "--alpha=0.5"], "only index settings"),
  ],
)
def test_bad_usage_gets_a_message_not_a_trace(tmp_path, name, args, message):
  result = subprocess.run(
    binary(name, *args),
    capture_output=True,
    text=True,
    cwd=tmp_path,
    env={**os.environ, "PYTHONPATH": REPO},
  )
  assert result.returncode != 0
  assert message in result.stderr
  assert "Traceback" not in result.stderr


def test_bad_data_directory_names_the_path(tmp_path):
  result = run_binary(
    "train",
    f"--workdir={tmp_path / 'w'}",
    "--source=csv",
    f"--data_dir={tmp_path / 'missing'}",
    f"--cache_dir={tmp_path / 'cache'}",
  )
  assert result.returncode == 1
  assert str(tmp_path / "missing") in result.stderr
  assert "Traceback" not in result.stderr


def test_every_binary_reports_a_bad_command_line_through_common_run():
  # absl's own app.run prints the whole --help before a usage error;
  # common.run makes it one line. A binary calling app.run would not.
  folder = os.path.join(REPO, "pipelines")
  sources = {}
  for name in sorted(os.listdir(folder)):
    if name.endswith(".py"):
      with open(os.path.join(folder, name)) as f:
        sources[name] = f.read()
  # A binary is a module that runs as a program (helpers such as common.py
  # are imported by them).
  binaries = [n for n, s in sources.items() if '__name__ == "__main__"' in s]
  assert len(binaries) >= 8
  for name in binaries:
    assert "app.run(" not in sources[name], name
    assert "common.run(main)" in sources[name], name
