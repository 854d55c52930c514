"""A workdir you can trust: one writer, true settings, faults in one line.

The lock is tested with two real train processes; disk full with a small
tmpfs (skipped where mount is refused) and with a fault-injected writer; a
read-only workdir with a read-only bind mount.
"""

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import tfr_ssl  # noqa: F401
from pipelines import common
from tests.pipelines_test import TINY_RUN
from tests.workflow_test import tiny_config
from tfr_ssl import atomic, workflow
from tfr_ssl.model import two_tower as model
from tfr_ssl.training import train, workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [*TINY_RUN, "--validation_examples=200"]


def binary(name, *args):
  return [sys.executable, "-m", f"pipelines.{name}", *args]


def run_binary(name, *args, **kwargs):
  return subprocess.run(
    binary(name, *args),
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=600,
    **kwargs,
  )


def one_error_line(result) -> str:
  """The binary failed with exactly one `error:` line and no trace."""
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  lines = [x for x in result.stderr.splitlines() if x.startswith("error:")]
  assert len(lines) == 1, result.stderr[-3000:]
  return lines[0]


@contextlib.contextmanager
def stopped_at_exit(process, seconds=60):
  """Stops `process` (SIGTERM, then SIGKILL) within a bounded time."""
  try:
    yield process
  finally:
    if process.poll() is None:
      process.send_signal(signal.SIGTERM)
      try:
        process.wait(timeout=seconds)
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=seconds)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """One tiny trained run (1 epoch), trained with a relative cache_dir."""
  root = tmp_path_factory.mktemp("trained")
  here = os.getcwd()
  os.chdir(root)
  try:
    config = tiny_config("cache", **{"train.epochs": 1})
    path = str(root / "work")
    train.train_and_evaluate(config, path)
  finally:
    os.chdir(here)
  return {"workdir": path, "root": root, "config": train.read_config(path)}


# ------------------------------------------------------------- the lock


def test_a_second_writer_fails_at_once_naming_the_holder(tmp_path):
  run = tmp_path / "run"
  flags = [
    f"--workdir={run}",
    f"--cache_dir={tmp_path / 'cache'}",
    *TINY,
    "--epochs=1000",  # long enough to still hold the lock
  ]
  log = open(tmp_path / "first.log", "w")  # noqa: SIM115
  first = subprocess.Popen(
    binary("train", *flags), cwd=REPO, stdout=log, stderr=log
  )
  with stopped_at_exit(first):
    lock = run / workdir.LOCK_FILE
    deadline = time.monotonic() + 300
    while f"pid {first.pid} " not in (
      lock.read_text() if lock.exists() else ""
    ):
      assert first.poll() is None, (tmp_path / "first.log").read_text()
      assert time.monotonic() < deadline, "the first run took no lock"
      time.sleep(0.05)
    second = run_binary("train", *flags, "--learning_rate=0.1")
    line = one_error_line(second)
    assert f"is in use by pid {first.pid} " in line
    assert "pipelines.train" in line
    assert first.poll() is None  # the first one runs on, untouched
  log.close()
  assert first.poll() is not None


def test_the_lock_is_reentrant_and_a_refused_new_workdir_is_removed(tmp_path):
  path = str(tmp_path / "new")
  with workdir.lock(path, create=True), workdir.lock(path, create=True):
    assert os.path.exists(os.path.join(path, workdir.LOCK_FILE))
  # Nothing was claimed: the workdir the lock made is gone again.
  assert not os.path.exists(path)
  missing = str(tmp_path / "missing")
  with (
    pytest.raises(workdir.WorkdirError, match="does not exist"),
    workdir.lock(missing),
  ):
    pass


def test_a_bad_flag_combination_is_refused_before_the_workdir_is_claimed(
  tmp_path,
):
  path = str(tmp_path / "work")
  config = tiny_config(
    str(tmp_path / "cache"),
    **{"model.mixed_negatives": 8, "ssl.batch_size": 4},
  )
  with pytest.raises(model.ModelConfigError, match=r"ssl\.batch_size=4"):
    train.train_and_evaluate(config, path)
  assert not os.path.exists(path)  # so a corrected rerun is not refused
  result = run_binary(
    "train",
    f"--workdir={path}",
    f"--cache_dir={tmp_path / 'cache'}",
    *TINY,
    "--mixed_negatives=8",
    "--ssl_batch_size=4",
  )
  assert "mixed_negatives=8" in one_error_line(result)
  assert not os.path.exists(path)


@pytest.mark.parametrize(
  "flag, message",
  [
    ("--train_batch_size=0", "--train_batch_size=0: train.batch_size must"),
    ("--dropout_rate=1.5", "--dropout_rate=1.5: ssl.dropout_rate must be in"),
    ("--epochs=-1", "--epochs=-1: train.epochs must be >= 1"),
  ],
)
def test_a_flag_out_of_range_is_one_line_naming_it(tmp_path, flag, message):
  result = run_binary("train", f"--workdir={tmp_path / 'w'}", flag)
  assert result.returncode != 0
  assert message in result.stderr
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "w").exists()


def test_the_lock_file_names_no_holder_after_a_clean_exit(tmp_path):
  path = tmp_path / "run"
  path.mkdir()
  lock = path / workdir.LOCK_FILE
  with workdir.lock(str(path)):
    assert f"pid {os.getpid()} " in lock.read_text()
  # Released: the file stays (one inode for every opener), emptied.
  assert lock.read_text() == ""
  with workdir.lock(str(path)):  # and the next writer takes it at once
    assert f"pid {os.getpid()} " in lock.read_text()


# --------------------------------------------------- stale temporaries


def test_the_next_writer_removes_what_killed_writers_left(tmp_path):
  path = tmp_path / "run"
  checkpoints = path / "checkpoints"
  checkpoints.mkdir(parents=True)
  (checkpoints / "checkpoint").write_text(
    'model_checkpoint_path: "ckpt-8"\nall_model_checkpoint_paths: "ckpt-8"\n'
  )
  kept = ["ckpt-8.index", "ckpt-8.data-00000-of-00001", "checkpoint"]
  stale = ["ckpt-16.index", "ckpt-16.data-00000-of-00001"]
  for name in kept[:2] + stale:
    (checkpoints / name).write_text("x")
  (checkpoints / "ckpt-16_temp").mkdir()  # TensorFlow's, killed mid-save
  (path / ".config.json.tmp-abc").write_text("half")
  (path / ".export.tmp-xyz").mkdir()
  (path / "eval").mkdir()
  (path / "eval" / ".metrics.json.tmp-1").write_text("half")
  (path / "config.json").write_text("{}")
  with workdir.lock(str(path)):
    pass
  assert sorted(os.listdir(checkpoints)) == sorted(kept)
  assert sorted(os.listdir(path)) == [
    ".lock",
    "checkpoints",
    "config.json",
    "eval",
  ]
  assert os.listdir(path / "eval") == []


# ------------------------------------------------------- recorded settings


def test_paths_are_stored_absolute(trained):
  config = trained["config"]
  assert config.data.cache_dir == str(trained["root"] / "cache")
  # So a step run from elsewhere finds the data.
  manifest = workflow.export_run(trained["workdir"])
  assert manifest["dataset_version"].startswith("synthetic/")


@pytest.mark.parametrize(
  "field, value",
  [
    ("train.learning_rate", 0.5),
    ("train.batch_size", 128),
    ("train.optimizer", "adagrad"),
    ("train.seed", 3),
    ("model.temperature", 0.2),
  ],
)
def test_a_setting_that_changes_the_computation_is_refused(
  trained, field, value
):
  recorded = os.path.join(trained["workdir"], "config.json")
  with open(recorded) as f:
    before = f.read()
  config = trained["config"].override({field: value})
  with pytest.raises(train.WorkdirError, match=f"{field}=") as error:
    train.train_and_evaluate(config, trained["workdir"])
  assert "\n" not in str(error.value)
  # config.json still records what was used.
  with open(recorded) as f:
    assert f.read() == before


def test_more_epochs_apply_and_are_recorded_from_their_step(trained, tmp_path):
  path = str(tmp_path / "copy")
  shutil.copytree(trained["workdir"], path)
  step = workdir.latest_step(path)
  config = trained["config"].override({"train.epochs": 2})
  summary = train.train_and_evaluate(config, path)
  assert summary["steps"] == 2 * step
  assert train.read_config(path).train.epochs == 2
  with open(os.path.join(path, workdir.CHANGES_FILE)) as f:
    changes = json.load(f)
  assert changes == [
    {"from_step": step, "changed": {"train.epochs": {"from": 1, "to": 2}}}
  ]
  # Fewer epochs than the model holds would not be used: refused.
  with pytest.raises(train.WorkdirError, match="epochs"):
    train.train_and_evaluate(config.override({"train.epochs": 1}), path)
  assert train.read_config(path).train.epochs == 2


def test_export_after_the_data_changed_is_refused(tmp_path):
  data_dir = tmp_path / "data"
  shutil.copytree(os.path.join(REPO, "data", "example"), data_dir)
  config = tiny_config(
    str(tmp_path / "cache"),
    **{
      "data.source": "csv",
      "data.data_dir": str(data_dir),
      "train.batch_size": 4,
      "ssl.batch_size": 4,
      "train.epochs": 1,
      "train.validation_examples": 0,
    },
  )
  path = str(tmp_path / "work")
  train.train_and_evaluate(config, path)
  with open(data_dir / "interactions.csv", "a") as f:
    f.write("u1,b05,1.0,2024-03-01\n")
  with pytest.raises(train.WorkdirError, match="data has changed"):
    workflow.export_run(path)
  with pytest.raises(train.WorkdirError, match="data has changed"):
    train.train_and_evaluate(config, path)


# ----------------------------------------------- faults end in one line


def _mount(*args) -> bool:
  try:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0
  except OSError:
    return False


# A disk filling up while training: tests/binaries_test.py
# (test_a_full_disk_while_checkpointing_leaves_no_temporary).


def test_disk_full_while_exporting_is_one_line_and_leaves_nothing(
  trained, tmp_path, monkeypatch, capsys
):
  path = str(tmp_path / "copy")
  shutil.copytree(trained["workdir"], path)
  real = atomic.write_bytes

  def full(target, data):
    if target.endswith("manifest.json"):
      raise OSError(errno.ENOSPC, "No space left on device", target)
    real(target, data)

  monkeypatch.setattr(atomic, "write_bytes", full)
  with pytest.raises(SystemExit) as exit_:
    common.run_or_fail(workflow.export_run, path)
  assert exit_.value.code == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "disk is full" in err
  assert "\n" not in err
  assert not [n for n in os.listdir(path) if n.startswith(".export")]


def test_a_read_only_workdir_is_one_line(trained, tmp_path, capsys):
  path = tmp_path / "ro"
  path.mkdir()
  if not _mount("--bind", trained["workdir"], str(path)):
    pytest.skip("mount is not allowed here")
  try:
    if not _mount("-o", "remount,ro,bind", str(path)):
      pytest.skip("a read-only remount is not allowed here")
    for step in (workflow.export_run, workflow.evaluate_run):
      with pytest.raises(SystemExit):
        common.run_or_fail(step, str(path))
      err = capsys.readouterr().err.strip()
      assert err.startswith(f"error: {path}: cannot write"), err
      assert "read-only" in err.lower() and "\n" not in err
  finally:
    subprocess.run(["umount", str(path)], check=False)
