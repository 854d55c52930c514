"""Training throughput: one process vs two multi_worker processes on this host.

Both train the default model (batch 1024, SSL batch 512, CFM, streaming
logQ) on the default synthetic dataset with `pipelines.train`, as a user
runs it: `--strategy=default` in one process, and `--strategy=multi_worker`
in two processes with TF_CONFIG on loopback ports (global batch 1024, so
512 interactions and 256 SSL items per worker and step). Throughput is
taken from the chief's TensorBoard event times between the first and the
last logged step, so start-up, tracing and the epoch-end validation are
left out. The two setups alternate, so machine load hits both alike; the
result is the ratio of their medians.

Usage:
  .venv/bin/python bench/distributed_bench.py [--rounds 2] [--steps 120]
      [--out bench/results/distributed.md]
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
from tensorflow.core.util import event_pb2

import tfr_ssl  # noqa: F401
from tfr_ssl import atomic
from tfr_ssl.training import distribute

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 1024


def free_ports(count: int) -> list[int]:
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def train_command(workdir: str, args, *extra: str) -> list[str]:
  return [
    sys.executable,
    "-m",
    "pipelines.train",
    f"--workdir={workdir}",
    f"--cache_dir={args.cache_dir}",
    f"--train_batch_size={BATCH}",
    "--epochs=1",
    f"--steps_per_epoch={args.steps}",
    f"--log_every={args.log_every}",
    f"--checkpoint_every={10 * args.steps}",
    "--validation_examples=1000",
    *extra,
  ]


def throughput(workdir: str, args) -> float:
  """Examples/s between the first and last logged step (chief's events)."""
  times = {}
  for path in glob.glob(os.path.join(workdir, "tensorboard", "events*")):
    for record in tf.data.TFRecordDataset(path):
      event = event_pb2.Event.FromString(record.numpy())
      for value in event.summary.value:
        if value.tag == "train/main_loss":
          times[event.step] = event.wall_time
  steps = sorted(times)
  if len(steps) < 2:
    raise RuntimeError(f"{workdir}: fewer than 2 logged steps")
  done = steps[-1] - steps[0]
  return done * BATCH / (times[steps[-1]] - times[steps[0]])


def run_one(args) -> float:
  workdir = tempfile.mkdtemp(prefix="one_", dir=args.scratch)
  subprocess.run(
    train_command(workdir, args, "--strategy=default"),
    cwd=REPO,
    check=True,
    capture_output=True,
    timeout=args.timeout,
  )
  return throughput(workdir, args)


def run_two(args) -> float:
  workdir = tempfile.mkdtemp(prefix="two_", dir=args.scratch)
  workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
  processes = []
  try:
    for index in range(2):
      env = dict(
        os.environ,
        TF_CONFIG=distribute.tf_config(workers, index),
      )
      processes.append(
        subprocess.Popen(
          train_command(workdir, args, "--strategy=multi_worker"),
          cwd=REPO,
          env=env,
          stdout=subprocess.DEVNULL,
          stderr=subprocess.DEVNULL,
        )
      )
    deadline = time.monotonic() + args.timeout
    for process in processes:
      process.wait(timeout=max(1.0, deadline - time.monotonic()))
      if process.returncode:
        raise RuntimeError(f"a worker failed ({process.returncode})")
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait()
  return throughput(workdir, args)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--steps", type=int, default=120)
  parser.add_argument("--log_every", type=int, default=10)
  parser.add_argument("--timeout", type=float, default=1200)
  parser.add_argument("--cache_dir", default="/tmp/distributed_bench_cache")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  args.scratch = tempfile.mkdtemp(prefix="distributed_bench_")
  started = time.perf_counter()
  subprocess.run(
    [
      sys.executable,
      "-m",
      "pipelines.prepare_data",
      f"--cache_dir={args.cache_dir}",
    ],
    cwd=REPO,
    check=True,
    capture_output=True,
  )
  figures = {"one process": [], "two workers": []}
  try:
    for round_ in range(args.rounds):
      order = [("one process", run_one), ("two workers", run_two)]
      if round_ % 2:
        order.reverse()
      for name, fn in order:
        figures[name].append(fn(args))
        print(f"round {round_ + 1} {name}: {figures[name][-1]:.0f} ex/s")
  finally:
    shutil.rmtree(args.scratch, ignore_errors=True)
  one = float(np.median(figures["one process"]))
  two = float(np.median(figures["two workers"]))
  lines = [
    "# Training throughput: one process vs two workers on one host",
    "",
    "Command: `.venv/bin/python bench/distributed_bench.py "
    f"--rounds {args.rounds} --steps {args.steps}`",
    "",
    f"Machine: {platform.platform()}, {os.cpu_count()} cores (shared), "
    f"Python {platform.python_version()}; wall time "
    f"{(time.perf_counter() - started) / 60:.1f} min.",
    "",
    "Default model and synthetic data, global batch 1024 (SSL 512), "
    f"{args.steps} steps per run; examples/s between the first and the last "
    "logged step (start-up, tracing and validation excluded); the setups "
    "alternate.",
    "",
    "| setup | examples/s per run | median |",
    "|---|---|---|",
  ]
  for name, values in figures.items():
    cells = ", ".join(f"{v:,.0f}" for v in values)
    lines.append(f"| {name} | {cells} | {np.median(values):,.0f} |")
  lines += ["", f"Two workers / one process: **{two / one:.2f}x**."]
  text = "\n".join(lines) + "\n"
  print(text)
  if args.out:
    atomic.write_text(args.out, text)


if __name__ == "__main__":
  main()
