"""Training speed against what the machine allows, in one process.

Measured, in alternating rounds so machine load hits all alike:

  - the roof: a chain of fp32 1024 x 1024 matmuls in TensorFlow, GFLOP/s;
  - the input pipeline alone (`train.train_stream`): examples/s;
  - the TFRS basic-retrieval tutorial model (user id and item id embedding
    towers of 32 dims, `tfrs.tasks.Retrieval`, batch 8192, Adagrad; no
    training-time metrics);
  - our model (default config) main-only and main + SSL, and main + SSL
    with the id-only query tower of before the history tower and with a
    10-item history instead of the default 20, driven by the
    training loop's own step function (`train._train_step_fn`): one step
    per call (`--steps_per_loop=1`, a Python round trip per step) and 20
    steps per call (the default).

FLOPs per step are counted per layer from the built models (stated, not
profiled): every dense layer 2 * rows * in * out and every logits matmul
2 * rows * columns * dim forward, times 3 for forward + backward (the
backward pass computes two matmuls of the forward's size). Embedding
lookups, pooling, the optimizer and the elementwise work are not counted:
they are memory-bound, and the gap between achieved GFLOP/s and the roof is
where they show. After the rounds, `--profile_steps` steps of each of our
two setups run under the TF profiler, and its per-op self times are
summed by op class and by part of the step (name scope).

Usage:
  .venv/bin/python bench/train_speed.py [--data_dir ../shared/data/ml-1m]
      [--rounds 3] [--steps 60] [--out bench/results/train_speed.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
import tf_keras

import tfr_ssl  # noqa: F401  (selects Keras 2 before TFRS is imported)
from tfr_ssl import atomic
from tfr_ssl import config as config_lib
from tfr_ssl import data as data_lib
from tfr_ssl.training import train

# isort: split
import tensorflow_recommenders as tfrs

TUTORIAL_BATCH = 8192
TUTORIAL_DIM = 32


def matmul_roof(size: int = 1024, chain: int = 16, repeats: int = 5) -> float:
  """GFLOP/s of a chain of fp32 size x size matmuls (best of repeats)."""
  a = tf.random.normal([size, size]) / np.sqrt(size)

  @tf.function
  def run(x):
    for _ in range(chain):
      x = tf.matmul(x, a)
    return x

  run(a).numpy()
  best = 0.0
  for _ in range(repeats):
    start = time.perf_counter()
    run(a).numpy()
    best = max(best, 2 * size**3 * chain / (time.perf_counter() - start))
  return best / 1e9


class Tutorial(tfrs.Model):
  """The basic-retrieval tutorial's model, on integer ids."""

  def __init__(self, num_users: int, num_items: int):
    super().__init__()
    self.user = tf_keras.layers.Embedding(num_users + 1, TUTORIAL_DIM)
    self.item = tf_keras.layers.Embedding(num_items + 1, TUTORIAL_DIM)
    self.task = tfrs.tasks.Retrieval()

  def compute_loss(self, inputs, training=False):
    return self.task(self.user(inputs["user"]), self.item(inputs["item"]))


def tutorial_flops(batch: int) -> float:
  return 3 * 2 * batch * batch * TUTORIAL_DIM


def dense_flops(tower, rows: int) -> float:
  """Forward matmul FLOPs of a tower's dense layers for `rows` inputs."""
  total = 0.0
  for layer in tower.submodules:
    if isinstance(layer, tf_keras.layers.Dense):
      fan_in, fan_out = layer.kernel.shape
      total += 2 * rows * fan_in * fan_out
  return total


def model_flops(model, config: config_lib.Config, ssl: bool) -> float:
  """Counted FLOPs of one training step (forward + backward, see doc)."""
  b, dim = config.train.batch_size, config.model.output_dim
  forward = dense_flops(model.query_tower, b) + dense_flops(model.item_tower, b)
  forward += 2 * b * b * dim  # in-batch logits
  if ssl:
    n = config.ssl.batch_size
    forward += dense_flops(model.item_tower, 2 * n) + 2 * n * n * dim
  return 3 * forward


def build_ours(config, prepared, steps_per_loop: int):
  model = train.build_model(config, prepared)
  window = {name: tf_keras.metrics.Mean(name) for name in train._PER_BATCH_LOGS}
  phase = "joint" if config.ssl.alpha > 0 else "main_only"
  nonfinite_step = tf.Variable(-1, dtype=tf.int64, trainable=False)
  step_fn = train._train_step_fn(
    model, phase, window, tf.distribute.get_strategy(), nonfinite_step
  )
  iterator = iter(train.train_stream(config, prepared))
  count = tf.constant(steps_per_loop, tf.int32)
  first = tf.constant(0, tf.int64)

  def run(steps: int) -> None:
    for _ in range(steps // steps_per_loop):
      step_fn(iterator, count, first)
    model.optimizer.iterations.numpy()  # wait for the last step

  return model, run


def build_tutorial(prepared, seed: int):
  tf_keras.utils.set_random_seed(seed)
  model = Tutorial(prepared.num_queries, prepared.num_items)
  model.compile(optimizer=tf_keras.optimizers.Adagrad(0.1))
  train_split = prepared.splits["train"]
  stream = (
    tf.data.Dataset.from_tensor_slices(
      {
        "user": train_split.query_index.astype(np.int32),
        "item": train_split.item_index.astype(np.int32),
      }
    )
    .shuffle(100_000, seed=seed)
    .repeat()
    .batch(TUTORIAL_BATCH, drop_remainder=True)
    .prefetch(tf.data.AUTOTUNE)
  )
  iterator = iter(stream)
  step = tf.function(model.train_step)

  def run(steps: int) -> None:
    for _ in range(steps):
      logs = step(next(iterator))
    float(logs["loss"])

  return model, run


def build_input(config, prepared):
  iterator = iter(train.train_stream(config, prepared))

  def run(steps: int) -> None:
    for _ in range(steps):
      batch = next(iterator)
    batch["item_index"].numpy()

  return None, run


# Op types by class, for the profile's breakdown (the rest is "other").
OP_CLASSES = {
  "matmul": ("MatMul", "_FusedMatMul", "BatchMatMulV2"),
  "embedding gather / scatter": (
    "ResourceGather",
    "GatherV2",
    "ResourceScatterUpdate",
    "ResourceScatterSub",
    "ResourceScatterAdd",
  ),
  "sparse-gradient sums (unique + segment sum)": (
    "UnsortedSegmentSum",
    "Unique",
    "UniqueWithCounts",
  ),
  "softmax cross-entropy": ("SoftmaxCrossEntropyWithLogits",),
  "copies (concat, select, tile, pack)": (
    "ConcatV2",
    "SelectV2",
    "Tile",
    "Pack",
    "Transpose",
  ),
}


def op_class(op_type: str) -> str:
  for name, types in OP_CLASSES.items():
    if op_type in types:
      return name
  return "elementwise and other"


def model_part(op_name: str) -> str:
  """The part of the step an op belongs to, from its name scope."""
  parts = [
    p
    for p in op_name.split("/")
    if p not in ("while", "body") and not p.startswith("_")
  ]
  grad = bool(parts) and parts[0] == "gradient_tape"
  parts = [p for p in parts if p not in ("gradient_tape", "while")]
  head = parts[0] if parts else ""
  if head.startswith(("Adam", "Adagrad")):
    return "optimizer"
  if head in ("query_tower", "item_tower", "main_task", "ssl_task"):
    return head + (" (backward)" if grad else "")
  if head.startswith("concat") and not grad:
    return "gradient aggregation (tables used twice)"
  return "other" + (" (backward)" if grad else "")


def profile_step(run, steps: int, logdir: str) -> dict | None:
  """Per-op self time (ms per step) of `steps` steps, or None.

  Uses the TF profiler and its op-statistics tool (`framework_op_stats`);
  that tool's module is internal to TF, so a TF without it gives None.
  """
  try:
    from tensorflow.python.profiler.internal import (
      _pywrap_profiler_plugin as plugin,
    )
  except ImportError:
    return None
  tf.profiler.experimental.start(logdir)
  run(steps)
  tf.profiler.experimental.stop()
  spaces = [
    os.path.join(root, name)
    for root, _, names in os.walk(logdir)
    for name in names
    if name.endswith(".xplane.pb")
  ]
  data, ok = plugin.xspace_to_tools_data(spaces[-1:], "framework_op_stats", {})
  if not ok:
    return None
  rows = json.loads(data)[0]["rows"]
  ops = {}
  for row in rows:
    op_type, op_name, self_us = (row["c"][i]["v"] for i in (2, 3, 7))
    if op_type == "IDLE" or op_name.startswith("Iterator::"):
      continue
    ops[op_type, op_name] = ops.get((op_type, op_name), 0.0) + self_us
  return {key: us / 1e3 / steps for key, us in ops.items()}


def profile_table(profiles: dict, group) -> list[str]:
  """Markdown rows: ms per step of each group, per profiled setup."""
  names = list(profiles)
  totals = {n: sum(profiles[n].values()) for n in names}
  groups: dict = {}
  for name in names:
    for key, ms in profiles[name].items():
      groups.setdefault(group(key), dict.fromkeys(names, 0.0))[name] += ms
  lines = [
    "| " + " | ".join(["", *[f"{n} ms/step (share)" for n in names]]) + " |",
    "|---" * (len(names) + 1) + "|",
  ]
  for label, values in sorted(groups.items(), key=lambda kv: -kv[1][names[-1]]):
    cells = [f"{values[n]:.1f} ({values[n] / totals[n]:.0%})" for n in names]
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  lines.append(
    "| total (CPU time of all threads) | "
    + " | ".join(f"{totals[n]:.1f}" for n in names)
    + " |"
  )
  return lines


# The setups' names, as the report's rows and the progress lines give them.
TUTORIAL = "TFRS tutorial (batch 8192)"
MAIN_20 = "ours, main only, 20 steps per call"
SSL_20 = "ours, main + SSL, 20 steps per call"
ID_ONLY_20 = "ours, id-only query, main + SSL, 20 steps per call"
HISTORY_10 = "ours, 10-item history, main + SSL, 20 steps per call"
# The two setups the profiler runs, by their label in the profile tables.
PROFILED = (("main only", MAIN_20), ("main + SSL", SSL_20))


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--data_dir",
    default=os.path.join(
      os.environ.get("TFR_SSL_SHARED_DATA", "../shared/data"), "ml-1m"
    ),
    help="ML-1M directory (the synthetic default data when absent).",
  )
  parser.add_argument("--cache_dir", default="/tmp/train_speed_cache")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument(
    "--profile_steps",
    type=int,
    default=40,
    help="Steps profiled per setup after the rounds (0 = no profile).",
  )
  parser.add_argument("--out", default="")
  return parser.parse_args(argv)


def base_config(args: argparse.Namespace) -> config_lib.Config:
  """The default config, on ML-1M when --data_dir exists (else synthetic)."""
  overrides = {"data.cache_dir": args.cache_dir}
  if os.path.isdir(args.data_dir):
    overrides.update(
      {"data.source": "movielens", "data.data_dir": args.data_dir}
    )
  return config_lib.Config().override(overrides)


def build_setups(base: config_lib.Config, prepared) -> dict:
  """Every measured setup: name -> ((model, run), config, ssl).

  `config` and `ssl` are what `model_flops` counts with; the tutorial's
  `ssl` slot holds its FLOPs instead (its model is not ours).
  """
  main_only = base.override({"ssl.alpha": 0.0})
  # The default model before the history query tower: the user id and
  # features only (the same config otherwise).
  id_only = base.override({"model.history_length": 0})
  # The same with half the default history (a candidate default).
  history_10 = base.override({"model.history_length": 10})
  return {
    "input pipeline alone": (build_input(base, prepared), base, None),
    TUTORIAL: (
      build_tutorial(prepared, base.train.seed),
      None,
      tutorial_flops(TUTORIAL_BATCH),
    ),
    "ours, main only, 1 step per call": (
      build_ours(main_only, prepared, 1),
      main_only,
      False,
    ),
    MAIN_20: (build_ours(main_only, prepared, 20), main_only, False),
    "ours, main + SSL, 1 step per call": (
      build_ours(base, prepared, 1),
      base,
      True,
    ),
    SSL_20: (build_ours(base, prepared, 20), base, True),
    ID_ONLY_20: (build_ours(id_only, prepared, 20), id_only, True),
    HISTORY_10: (build_ours(history_10, prepared, 20), history_10, True),
  }


@dataclasses.dataclass
class Measured:
  """Per setup: counted FLOPs per step, batch size, examples/s per round;
  the matmul roof (GFLOP/s) per round; and per setup, the process's CPU
  seconds per step in each round (every thread: a step that leaves a core
  idle shows a wall-time cost above its CPU-time cost)."""

  flops: dict[str, float]
  batch: dict[str, int]
  rates: dict[str, list[float]]
  roofs: list[float]
  cpu: dict[str, list[float]] = dataclasses.field(default_factory=dict)


def warm_up(setups: dict, base: config_lib.Config) -> Measured:
  """Counts each setup's FLOPs and batch, and runs it once untimed."""
  flops, batch = {}, {}
  for name, ((model, run), config, ssl) in setups.items():
    if name == TUTORIAL:
      flops[name], batch[name] = ssl, TUTORIAL_BATCH
    else:
      batch[name] = base.train.batch_size
      flops[name] = model_flops(model, config, ssl) if model else 0.0
    run(20)  # trace and warm up
    print(f"{name}: ready", flush=True)
  return Measured(flops, batch, {name: [] for name in setups}, [])


def measure(setups: dict, measured: Measured, rounds: int, steps: int):
  """Alternating rounds: the roof, then every setup (order reversed on odd
  rounds), so that machine load hits all alike."""
  names = list(setups)
  for round_ in range(rounds):
    measured.roofs.append(matmul_roof())
    for name in names if round_ % 2 == 0 else names[::-1]:
      (_, run), _, _ = setups[name]
      start, cpu = time.perf_counter(), time.process_time()
      run(steps)
      measured.rates[name].append(
        steps * measured.batch[name] / (time.perf_counter() - start)
      )
      measured.cpu.setdefault(name, []).append(
        (time.process_time() - cpu) / steps
      )
    print(
      f"round {round_ + 1}: roof {measured.roofs[-1]:.0f} GFLOP/s; "
      + "; ".join(f"{n}: {measured.rates[n][-1]:,.0f} ex/s" for n in names),
      flush=True,
    )


def profile_setups(setups: dict, steps: int) -> dict:
  """Per-op ms per step of the PROFILED setups (none if steps is 0 or the
  TF profiler's tool is missing)."""
  profiles = {}
  if not steps:
    return profiles
  for label, name in PROFILED:
    with tempfile.TemporaryDirectory() as logdir:
      (_, run), _, _ = setups[name]
      profile = profile_step(run, steps, logdir)
    if profile is not None:
      profiles[label] = profile
  return profiles


def speed_table(measured: Measured) -> list[str]:
  """Markdown: examples/s, counted GFLOP/s and share of the roof per setup."""
  roof = float(np.median(measured.roofs))
  tutorial = float(np.median(measured.rates[TUTORIAL]))
  lines = [
    "| setup | batch | examples/s (median; rounds) | counted GFLOP/step "
    "| GFLOP/s | share of roof | vs tutorial |",
    "|---|---|---|---|---|---|---|",
  ]
  for name, rates in measured.rates.items():
    rate = float(np.median(rates))
    batch = measured.batch[name]
    gflop = measured.flops[name] / 1e9
    achieved = gflop * rate / batch
    cells = ", ".join(f"{r:,.0f}" for r in rates)
    lines.append(
      f"| {name} | {batch} | {rate:,.0f} ({cells}) | "
      + (
        f"{gflop:.2f} | {achieved:.1f} | {achieved / roof:.0%}"
        if gflop
        else "- | - | -"
      )
      + f" | {rate / tutorial:.2f}x |"
    )
  return lines


def profile_section(profiles: dict, steps: int) -> list[str]:
  """Markdown: the profile tables by op class and by part of the step."""
  if not profiles:
    return []
  return [
    "",
    f"## Profile of the step ({steps} steps each, TF profiler)",
    "",
    "Self time of every op, summed over threads, per step; by op class:",
    "",
    *profile_table(profiles, lambda key: op_class(key[0])),
    "",
    "By part of the step (name scope):",
    "",
    *profile_table(profiles, lambda key: model_part(key[1])),
  ]


def cpu_ratio(measured: Measured) -> str:
  """`, and N.NNx in CPU time` for the SSL step over the main-only one
  (medians of the rounds), or nothing when either was not measured."""
  main, ssl = measured.cpu.get(MAIN_20), measured.cpu.get(SSL_20)
  if not main or not ssl:
    return ""
  return (
    f", and **{float(np.median(ssl)) / float(np.median(main)):.2f}x** in "
    "the process's CPU time per step (equal ratios: no core idles longer "
    "in the SSL step than in the main-only one)"
  )


def render(
  args: argparse.Namespace,
  argv: list[str],
  minutes: float,
  base: config_lib.Config,
  prepared,
  measured: Measured,
  profiles: dict,
) -> str:
  """The markdown report (newline-terminated)."""
  roofs = measured.roofs
  main_20 = float(np.median(measured.rates[MAIN_20]))
  ssl_20 = float(np.median(measured.rates[SSL_20]))
  # Measured runs have every setup; a partial Measured (tests) may not.
  query_lines = []
  if measured.rates.get(ID_ONLY_20) and measured.rates.get(HISTORY_10):
    id_only = float(np.median(measured.rates[ID_ONLY_20]))
    history_10 = float(np.median(measured.rates[HISTORY_10]))
    query_lines = [
      "",
      "Against the id-only query (main + SSL, 20 steps per call): the "
      f"default 20-item history runs at **{ssl_20 / id_only:.2f}x** its "
      f"examples/s, a 10-item history at **{history_10 / id_only:.2f}x**.",
    ]
  lines = [
    "# Training speed against the machine",
    "",
    f"Command: `.venv/bin/python bench/train_speed.py {' '.join(argv)}`",
    "",
    f"Machine: {platform.platform()}, {os.cpu_count()} cores (shared), "
    f"Python {platform.python_version()}, TF {tf.__version__}; wall time "
    f"{minutes:.1f} min. Data: "
    f"{base.data.source} ({prepared.num_items:,} items, "
    f"{len(prepared.splits['train']):,} training interactions). "
    f"{args.rounds} alternating rounds of {args.steps} steps per setup.",
    "",
    f"Roof: fp32 1024 x 1024 matmul chain, median "
    f"**{float(np.median(roofs)):.0f} GFLOP/s** "
    f"(rounds: {', '.join(f'{r:.0f}' for r in roofs)}).",
    "",
    *speed_table(measured),
    "",
    f"A main + SSL step costs **{main_20 / ssl_20:.2f}x** a main-only step "
    "(20 steps per call, by examples/s)" + cpu_ratio(measured) + ".",
    *query_lines,
    *profile_section(profiles, args.profile_steps),
  ]
  return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
  args = parse_args(argv)
  started = time.perf_counter()
  base = base_config(args)
  prepared = data_lib.load(base.data)
  setups = build_setups(base, prepared)
  measured = warm_up(setups, base)
  measure(setups, measured, args.rounds, args.steps)
  profiles = profile_setups(setups, args.profile_steps)
  minutes = (time.perf_counter() - started) / 60
  text = render(args, argv, minutes, base, prepared, measured, profiles)
  print(text)
  if args.out:
    atomic.write_text(args.out, text)


if __name__ == "__main__":
  main(sys.argv[1:])
