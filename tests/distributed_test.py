"""Training under tf.distribute, started as a user starts it.

Worker processes of `pipelines.train --strategy=multi_worker` with TF_CONFIG
on loopback ports, and `--strategy=mirrored` on 2 logical CPU devices, are
compared step by step with a one-process run of the same global batch and
seed. Cross-replica negatives (every replica scores its queries against the
whole global batch) and per-row random draws made for the global batch make
the losses equal up to float summation order, so the tolerance is tight.
Every process is stopped within a bounded time, whatever happens.
"""

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.util import event_pb2

from tests.pipelines_test import REPO, TINY_RUN, binary, run_binary
from tfr_ssl.data import pipeline
from tfr_ssl.training import distribute, train

# Minutes of training processes: started first (tests/conftest.py).
pytestmark = pytest.mark.long_file

# 3 steps per epoch; 2 epochs = 6 steps; losses logged every step.
STEPS = 3
RUN = [
  *TINY_RUN,
  f"--steps_per_epoch={STEPS}",
  "--log_every=1",
  f"--checkpoint_every={STEPS}",
  "--validation_examples=200",
]
# Per-step losses agree up to float32 summation order (observed: identical
# to 5 decimals); a real divergence (different negatives, draws or
# batches) moves them by far more than this.
RTOL = 1e-4
DEADLINE_S = 420
LOSSES = ("train/main_loss", "train/ssl_loss", "train/loss")


def losses(workdir) -> dict[str, list[float]]:
  """The per-step TensorBoard losses of a run, in step order."""
  steps: dict[str, dict[int, float]] = {}
  for path in glob.glob(os.path.join(workdir, "tensorboard", "events*")):
    for record in tf.data.TFRecordDataset(path):
      event = event_pb2.Event.FromString(record.numpy())
      for value in event.summary.value:
        if value.tag in LOSSES:
          steps.setdefault(value.tag, {})[event.step] = float(
            tf.make_ndarray(value.tensor)
          )
  return {tag: [v for _, v in sorted(s.items())] for tag, s in steps.items()}


def free_ports(count: int) -> list[int]:
  sockets = [socket.socket() for _ in range(count)]
  try:
    for s in sockets:
      s.bind(("127.0.0.1", 0))
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


def run_workers(tmp_path, workdir, flags, name):
  """Runs 2 multi_worker processes to completion (killed at the deadline).

  Returns (return codes, logs, each worker's TMPDIR).
  """
  ports = free_ports(2)
  workers = [f"127.0.0.1:{p}" for p in ports]
  processes, logs, tmpdirs = [], [], []
  try:
    for index in range(2):
      tmpdir = tmp_path / f"{name}_tmp{index}"
      tmpdir.mkdir()
      log = (tmp_path / f"{name}_worker{index}.log").open("w")
      env = dict(
        os.environ,
        TF_CONFIG=distribute.tf_config(workers, index),
        TMPDIR=str(tmpdir),
        CUDA_VISIBLE_DEVICES="",
      )
      processes.append(
        subprocess.Popen(
          binary(
            "train",
            f"--workdir={workdir}",
            "--strategy=multi_worker",
            *flags,
          ),
          cwd=REPO,
          env=env,
          stdout=log,
          stderr=subprocess.STDOUT,
          start_new_session=True,
        )
      )
      logs.append(log)
      tmpdirs.append(tmpdir)
    deadline = time.monotonic() + DEADLINE_S
    for process in processes:
      process.wait(timeout=max(1.0, deadline - time.monotonic()))
  finally:
    for process in processes:
      if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    for log in logs:
      log.close()
  texts = [Path(log.name).read_text() for log in logs]
  return [p.returncode for p in processes], texts, tmpdirs


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
  """The reference: 2 epochs in one process, default strategy."""
  root = tmp_path_factory.mktemp("one_process")
  workdir = root / "run"
  flags = [f"--cache_dir={root / 'cache'}", *RUN, "--epochs=2"]
  done = run_binary("train", f"--workdir={workdir}", *flags, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  return root, workdir, losses(workdir)


def assert_same_losses(got, want):
  for tag in LOSSES:
    assert len(got[tag]) == len(want[tag]) == 2 * STEPS, (tag, got, want)
    np.testing.assert_allclose(got[tag], want[tag], rtol=RTOL, err_msg=tag)


def test_two_workers_match_one_process_and_resume(one_process, tmp_path):
  root, reference_dir, reference = one_process
  workdir = tmp_path / "cluster"
  flags = [f"--cache_dir={root / 'cache'}", *RUN]

  # Epoch 1, then both workers are started again for epoch 2: they resume
  # from the chief's checkpoint at step 3 and continue the same stream.
  codes, logs, tmpdirs = run_workers(
    tmp_path, workdir, [*flags, "--epochs=1"], "a"
  )
  assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
  codes, logs, tmpdirs = run_workers(
    tmp_path, workdir, [*flags, "--epochs=2"], "b"
  )
  assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
  assert_same_losses(losses(workdir), reference)

  with open(workdir / "train_metrics.json") as f:
    summary = json.load(f)
  assert summary["steps"] == 2 * STEPS
  assert summary["steps_this_run"] == STEPS  # resumed, not restarted
  assert (summary["workers"], summary["replicas"]) == (2, 2)
  # The non-chief's share of the checkpoints went to its own temporary
  # directory, removed at the end; the chief alone wrote the workdir.
  assert [os.listdir(d) for d in tmpdirs] == [[], []]

  # The chief's checkpoint restores in one process, to the weights the
  # one-process run reached.
  model, _, _ = train.load_trained_model(str(workdir), "latest")
  ref_model, _, _ = train.load_trained_model(str(reference_dir), "latest")
  for got, want in zip(model.weights, ref_model.weights, strict=True):
    assert got.name == want.name
    np.testing.assert_allclose(
      got.numpy(), want.numpy(), rtol=1e-3, atol=1e-5, err_msg=got.name
    )


def test_mirrored_on_two_cpu_devices_matches_default(one_process, tmp_path):
  root, _, reference = one_process
  workdir = tmp_path / "mirrored"
  done = run_binary(
    "train",
    f"--workdir={workdir}",
    f"--cache_dir={root / 'cache'}",
    *RUN,
    "--epochs=2",
    "--strategy=mirrored",
    "--local_devices=2",
    timeout=600,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert_same_losses(losses(workdir), reference)
  with open(workdir / "train_metrics.json") as f:
    assert json.load(f)["replicas"] == 2


def test_a_batch_that_does_not_split_over_replicas_is_one_line(tmp_path):
  done = run_binary(
    "train",
    f"--workdir={tmp_path / 'run'}",
    f"--cache_dir={tmp_path / 'cache'}",
    *RUN,
    "--train_batch_size=127",
    "--strategy=mirrored",
    "--local_devices=2",
    timeout=300,
  )
  assert done.returncode == 1
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith("error: --train_batch_size"), done.stderr[-2000:]
  assert "2 replicas" in last
  assert not (tmp_path / "run" / "config.json").exists()


def test_multi_worker_needs_tf_config(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
  done = run_binary(
    "train",
    f"--workdir={tmp_path / 'run'}",
    "--strategy=multi_worker",
    timeout=300,
    env=env,
  )
  assert done.returncode == 1
  assert (
    done.stderr.strip()
    .splitlines()[-1]
    .startswith("error: --strategy=multi_worker needs the TF_CONFIG")
  )


@pytest.mark.parametrize(
  "config, fragment",
  [
    ('{"cluster": {"worker": ["a:1"]}}', "does not name a member"),
    (
      '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", '
      '"index": 3}}',
      "out of range",
    ),
    ("{not json", "not JSON"),
  ],
)
def test_bad_tf_config_is_named(monkeypatch, config, fragment):
  monkeypatch.setenv("TF_CONFIG", config)
  with pytest.raises(distribute.DistributeError, match=fragment):
    distribute.cluster_spec()


def test_replica_shards_concatenate_to_the_one_process_batch():
  # 3 replicas over 2 processes (2 + 1): each process's consecutive
  # elements are its replicas' slices; all slices in replica order are the
  # batch of the unsharded stream, step by step, also after a skip.
  from tests import model_fakes

  prepared = model_fakes.tiny_dataset()
  common = dict(batch_size=12, ssl_batch_size=6, seed=3, repeat=True)
  whole = list(pipeline.train_dataset(prepared, **common).take(4))
  first = pipeline.Shard(replicas=3, first=0, local=2)
  second = pipeline.Shard(replicas=3, first=2, local=1)
  a = list(pipeline.train_dataset(prepared, shard=first, **common).take(8))
  b = list(pipeline.train_dataset(prepared, shard=second, **common).take(4))
  for step in range(4):
    parts = [a[2 * step], a[2 * step + 1], b[step]]
    for key in ("item_index", "ssl_item_index"):
      np.testing.assert_array_equal(
        np.concatenate([p[key].numpy() for p in parts]),
        whole[step][key].numpy(),
      )
      assert all(
        p[key].shape[0] * 3 == whole[step][key].shape[0] for p in parts
      )
  skipped = list(
    pipeline.train_dataset(prepared, start_step=2, **common).take(2)
  )
  for step in range(2):
    np.testing.assert_array_equal(
      skipped[step]["item_index"], whole[step + 2]["item_index"]
    )


def test_role_of_one_process_is_the_chief():
  role = distribute.role(tf.distribute.get_strategy())
  assert role == distribute.Role(
    chief=True, worker=0, workers=1, replicas=1, local_replicas=1
  )
  assert not role.distributed


_PARAMETER_SERVERS = textwrap.dedent(
  """
  import json, sys
  import numpy as np
  import tensorflow as tf
  import tfr_ssl
  from tfr_ssl.training import distribute
  from tfr_ssl.training import train
  from tfr_ssl import data as data_lib
  from tests.workflow_test import tiny_config

  cache, workdir, ports = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
  # One worker and two parameter servers, in this process, on loopback.
  cluster = tf.train.ClusterSpec({
      "worker": [f"127.0.0.1:{ports[0]}"],
      "ps": [f"127.0.0.1:{ports[1]}", f"127.0.0.1:{ports[2]}"]})
  servers = [tf.distribute.Server(cluster, job_name="worker", task_index=0,
                                  protocol="grpc")]
  servers += [tf.distribute.Server(cluster, job_name="ps", task_index=i,
                                   protocol="grpc") for i in range(2)]
  resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
      cluster, rpc_layer="grpc")
  strategy = distribute.parameter_server_strategy(resolver, 4096)
  config = tiny_config(cache)
  prepared = data_lib.load(config.data)
  with strategy.scope():
    model = train.build_model(config, prepared)
  # The item id table: 300 x 16 float32 = 19,200 bytes, split over both.
  table = model.item_encoder.tables[0]
  print("SHARDS", json.dumps(sorted(v.device for v in table.variables)))
  coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
  stream = coordinator.create_per_worker_dataset(
      lambda: train.train_stream(config, prepared))
  iterator = iter(stream)

  @tf.function
  def step(iterator):
    def replica_step(batch):
      return model.train_step(batch)["loss"]
    return strategy.run(replica_step, args=(next(iterator),))

  losses = []
  for _ in range(4):
    result = coordinator.schedule(step, args=(iterator,))
    coordinator.join()
    losses.append(float(result.fetch()))
  print("LOSSES", json.dumps(losses))
  path = tf.train.Checkpoint(model=model).write(workdir + "/model")
  rows = tf.range(table.shape[0])
  print("TABLE", json.dumps(float(tf.reduce_sum(tf.abs(
      tf.gather(table, rows))))))
  print("PATH", path)
  """
)


def test_sharded_tables_train_under_parameter_servers(tmp_path):
  # The model's embedding tables (and every variable above the shard size)
  # are split over 2 parameter servers; steps scheduled on the worker train
  # it; the sharded checkpoint restores into an unsharded model in one
  # process with the same values.
  env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
  env.pop("TF_CONFIG", None)
  cache = tmp_path / "cache"
  try:
    done = subprocess.run(
      [
        sys.executable,
        "-c",
        _PARAMETER_SERVERS,
        str(cache),
        str(tmp_path),
        json.dumps(free_ports(3)),
      ],
      capture_output=True,
      text=True,
      env=env,
      cwd=REPO,
      timeout=DEADLINE_S,
    )
  except subprocess.TimeoutExpired as e:
    pytest.fail(f"no result within {DEADLINE_S} s: {e.stderr}")
  assert done.returncode == 0, done.stderr[-3000:]
  out = dict(
    line.split(" ", 1) for line in done.stdout.splitlines() if " " in line
  )
  shards = json.loads(out["SHARDS"])
  assert shards == [
    "/job:ps/replica:0/task:0/device:CPU:0",
    "/job:ps/replica:0/task:1/device:CPU:0",
  ]
  losses_seen = json.loads(out["LOSSES"])
  assert all(np.isfinite(losses_seen)) and losses_seen[-1] < losses_seen[0]

  from tests.workflow_test import tiny_config
  from tfr_ssl import data as data_lib

  prepared = data_lib.load(tiny_config(str(cache)).data)
  model = train.build_model(tiny_config(str(cache)), prepared)
  table = model.item_encoder.tables[0]
  assert isinstance(table, tf.Variable)  # one variable again
  initial = float(tf.reduce_sum(tf.abs(table)))
  tf.train.Checkpoint(model=model).read(out["PATH"].strip()).expect_partial()
  restored = float(tf.reduce_sum(tf.abs(table)))
  np.testing.assert_allclose(restored, json.loads(out["TABLE"]), rtol=1e-6)
  assert abs(restored - initial) > 1e-3  # trained values, not the init


def test_a_lost_worker_stops_the_chief_with_one_line(tmp_path):
  # Worker 1 is killed (SIGKILL) once the chief has saved a checkpoint: the
  # chief's collectives fail, and it exits in bounded time with one line
  # that says how to resume, not a stack trace.
  workdir = tmp_path / "lost"
  workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
  flags = [
    f"--workdir={workdir}",
    f"--cache_dir={tmp_path / 'cache'}",
    *RUN,
    "--epochs=50",
    "--strategy=multi_worker",
  ]
  processes = []
  try:
    for index in range(2):
      env = dict(
        os.environ,
        TF_CONFIG=distribute.tf_config(workers, index),
        CUDA_VISIBLE_DEVICES="",
      )
      processes.append(
        subprocess.Popen(
          binary("train", *flags),
          cwd=REPO,
          env=env,
          stdout=subprocess.DEVNULL,
          stderr=subprocess.PIPE,
          text=True,
          start_new_session=True,
        )
      )
    marker = workdir / "checkpoints" / "checkpoint"
    deadline = time.monotonic() + DEADLINE_S
    while not marker.exists():
      assert time.monotonic() < deadline, "no checkpoint in time"
      assert processes[0].poll() is None, processes[0].stderr.read()[-3000:]
      time.sleep(0.05)
    os.killpg(processes[1].pid, signal.SIGKILL)
    _, stderr = processes[0].communicate(timeout=180)
  finally:
    for process in processes:
      if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
      process.wait(timeout=30)
  assert processes[0].returncode == 1, stderr[-3000:]
  last = stderr.strip().splitlines()[-1]
  assert last.startswith("error: a worker of the cluster was lost"), last
  assert "Start every worker again with the same command" in last
