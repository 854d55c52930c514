"""Train-step time of main-only (alpha = 0) vs main + SSL (CFM, alpha = 1).

Both models use the default config (batch 1024, SSL batch 512, streaming
logQ, 64-dim embeddings, [256] tower MLPs) on the default synthetic dataset
(`tfr_ssl.data.load(DataConfig())`, 20k items). A pool of batches from
`tfr_ssl.data.train_dataset` is materialised first, so the figures are the
model's step (forward, backward, Adagrad update, estimator update), not the
input pipeline. The two models are timed in alternating rounds (the order
flips every round) in one process, so machine load hits both alike.

Usage:
  .venv/bin/python bench/step_time.py [--rounds 10] [--steps 10]
      [--out bench/results/step_time.md]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np
import tensorflow as tf
import tf_keras

import tfr_ssl  # noqa: F401
from tfr_ssl import atomic, data
from tfr_ssl.config import Config
from tfr_ssl.model.two_tower import TwoTowerModel
from tfr_ssl.training import train

VARIANTS = {
  "main only (alpha=0)": {"ssl.alpha": 0.0},
  "main + SSL (CFM, alpha=1)": {"ssl.alpha": 1.0, "ssl.masking": "cfm"},
}


def batch_pool(config: Config, prepared, size: int) -> list[dict]:
  return list(train.train_stream(config, prepared).take(size))


def build_step(config: Config, prepared):
  tf_keras.utils.set_random_seed(config.train.seed)
  model = TwoTowerModel(config, prepared)
  model.compile(
    optimizer=tf_keras.optimizers.Adagrad(config.train.learning_rate)
  )
  model.optimizer.build(model.trainable_variables)
  return model, tf.function(model.train_step)


def run(args) -> str:
  base = Config()
  start = time.perf_counter()
  prepared = data.load(base.data)
  load_seconds = time.perf_counter() - start
  pool = batch_pool(base, prepared, args.pool)
  steps = {}
  for name, overrides in VARIANTS.items():
    config = base.override(overrides)
    model, step = build_step(config, prepared)
    start = time.perf_counter()
    for batch in pool[: args.warmup]:  # trace + warm up
      step(batch)["loss"].numpy()
    print(f"{name}: traced in {time.perf_counter() - start:.1f}s", flush=True)
    steps[name] = (model, step)

  wall = {name: [] for name in VARIANTS}
  cpu = {name: [] for name in VARIANTS}
  names = list(VARIANTS)
  cursor = 0
  for round_index in range(args.rounds):
    order = names if round_index % 2 == 0 else names[::-1]
    for name in order:
      _, step = steps[name]
      start_wall, start_cpu = time.perf_counter(), time.process_time()
      for _ in range(args.steps):
        step(pool[cursor % len(pool)])["loss"].numpy()
        cursor += 1
      wall[name].append((time.perf_counter() - start_wall) / args.steps)
      cpu[name].append((time.process_time() - start_cpu) / args.steps)
    print(
      f"round {round_index}: "
      + ", ".join(f"{n}: {1e3 * wall[n][-1]:.1f} ms" for n in names),
      flush=True,
    )
  return report(args, wall, cpu, prepared, load_seconds, base)


def report(args, wall, cpu, prepared, load_seconds, config) -> str:
  main, ssl = list(VARIANTS)
  per_round = np.array(wall[ssl]) / np.array(wall[main])
  rows = []
  for name in VARIANTS:
    w, c = np.array(wall[name]), np.array(cpu[name])
    rows.append(
      f"| {name} | {1e3 * w.mean():.1f} | {1e3 * np.median(w):.1f} | "
      f"{1e3 * w.std():.1f} | {1e3 * c.mean():.1f} |"
    )
  wall_ratio = np.mean(wall[ssl]) / np.mean(wall[main])
  median_ratio = np.median(wall[ssl]) / np.median(wall[main])
  cpu_ratio = np.mean(cpu[ssl]) / np.mean(cpu[main])
  command = " ".join(["bench/step_time.py", *sys.argv[1:]])
  return f"""# Train-step time: main only vs main + SSL

Command: `.venv/bin/python {command}`

Machine: {platform.machine()}, 2 shared cores (Python
{platform.python_version()}, TF {tf.__version__}); other jobs share the
cores, so compare the ratio, not absolute times.

Data: default synthetic dataset ({prepared.num_items:,} items,
{len(prepared.splits["train"]):,} training interactions; loaded in
{load_seconds:.1f}s), {args.pool} batches from `data.train_dataset`
materialised before timing (model step only, no input pipeline).
Config: defaults (batch {config.train.batch_size}, SSL batch
{config.ssl.batch_size}, embedding {config.model.embedding_dim}, towers
{list(config.model.item_layers)} -> {config.model.output_dim}, logq
{config.model.logq}, Adagrad). {args.rounds} alternating rounds of
{args.steps} steps per model (order flipped every round), after
{args.warmup} warm-up steps each.

| variant | ms/step (wall, mean) | median | std over rounds | CPU ms/step |
|---|---|---|---|---|
{chr(10).join(rows)}

Ratio main + SSL / main only: **{wall_ratio:.2f}x** by mean wall clock
({median_ratio:.2f}x by median, {cpu_ratio:.2f}x by CPU time); per-round
wall ratios: median {np.median(per_round):.2f}, range
{per_round.min():.2f} to {per_round.max():.2f}.

The SSL step adds one item-tower pass over 2 x {config.ssl.batch_size}
augmented items (both views stacked in one pass) and the [512, 512]
contrastive softmax, next to the main step's query and item tower passes
over {config.train.batch_size} pairs and the [1024, 1024] softmax.
"""


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=5)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--pool", type=int, default=16)
  parser.add_argument("--out", default="bench/results/step_time.md")
  args = parser.parse_args()
  text = run(args)
  atomic.write_text(args.out, text)
  print(text)


if __name__ == "__main__":
  main()
