"""Training speed of the default model against an earlier commit's default.

`bench/train_speed.py` compares setups of one code version in one process.
A question such as "is the default model still at least 2/3 as fast as it
was before the history tower?" compares two versions: the other one's code
and its own defaults. This checks the commit out into a temporary git
worktree and alternates processes, one per side and round, each building
its version's default model with that version's `bench/train_speed.py`
(`build_ours`: the training loop's own step function, 20 steps per call)
on the synthetic default data, warming up, then timing `--steps` steps
three times; a process reports its median. Alternating rounds share the
machine's load, so the ratio is the figure to read (the machine is shared
and noisy), not the rates.

Usage:
  .venv/bin/python bench/speed_vs_commit.py --baseline 48e5432 \
      [--rounds 3] [--steps 40] [--out bench/results/speed_vs_commit.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from tfr_ssl import atomic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run inside each version's tree: its own package, its own bench helper,
# its own defaults (only the cache directory is set, per version: a
# dataset cache of one version need not load in another).
CHILD = """
import os, sys, time
sys.path[:0] = [os.getcwd(), os.path.join(os.getcwd(), "bench")]
import tfr_ssl
import train_speed
from tfr_ssl import config as config_lib
config = config_lib.Config().override({"data.cache_dir": sys.argv[1]})
prepared = train_speed.data_lib.load(config.data)
model, run = train_speed.build_ours(config, prepared, 20)
steps = int(sys.argv[2])
run(steps)
rates = []
for _ in range(3):
  start = time.perf_counter()
  run(steps)
  rates.append(steps * config.train.batch_size / (time.perf_counter() - start))
print("RATE", sorted(rates)[1])
"""


def measure(tree: str, cache: str, steps: int) -> float:
  """Examples/s of `tree`'s default model, in a fresh process."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=tree)
  done = subprocess.run(
    [sys.executable, "-c", CHILD, cache, str(steps)],
    cwd=tree,
    env=env,
    capture_output=True,
    text=True,
    timeout=1800,
  )
  found = re.findall(r"^RATE (\S+)$", done.stdout, re.MULTILINE)
  if done.returncode or not found:
    sys.exit(
      f"error: the measuring process in {tree} failed (exit "
      f"{done.returncode}):\n{done.stderr[-2000:]}"
    )
  return float(found[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--baseline", required=True, help="commit to compare")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  head = subprocess.run(
    ["git", "rev-parse", "--short", "HEAD"],
    cwd=REPO,
    capture_output=True,
    text=True,
    check=True,
  ).stdout.strip()
  started = time.perf_counter()
  scratch = tempfile.mkdtemp(prefix="speed_vs_commit_")
  baseline_tree = os.path.join(scratch, "baseline")
  subprocess.run(
    ["git", "worktree", "add", "--detach", baseline_tree, args.baseline],
    cwd=REPO,
    check=True,
    capture_output=True,
  )
  trees = {f"baseline {args.baseline}": baseline_tree, f"HEAD {head}": REPO}
  rates = {name: [] for name in trees}
  try:
    for round_ in range(args.rounds):
      for name, tree in trees.items():
        cache = os.path.join(scratch, "cache_" + name.split()[0])
        rates[name].append(measure(tree, cache, args.steps))
        print(f"round {round_ + 1} {name}: {rates[name][-1]:,.0f} ex/s")
  finally:
    subprocess.run(
      ["git", "worktree", "remove", "--force", baseline_tree],
      cwd=REPO,
      capture_output=True,
    )
    shutil.rmtree(scratch, ignore_errors=True)
  base_name, head_name = trees
  pairs = [
    h / b for b, h in zip(rates[base_name], rates[head_name], strict=True)
  ]
  lines = [
    "# Training speed against an earlier commit",
    "",
    f"Command: `.venv/bin/python bench/speed_vs_commit.py "
    f"{' '.join(sys.argv[1:])}`",
    "",
    f"Machine: {platform.platform()}, {os.cpu_count()} cores (shared), "
    f"Python {platform.python_version()}; wall time "
    f"{(time.perf_counter() - started) / 60:.1f} min. Each side's default "
    f"model (its own code and config), synthetic default data, main + SSL "
    f"as the defaults say, 20 steps per call; {args.rounds} alternating "
    f"rounds of one process per side, each the median of 3 x {args.steps} "
    "steps.",
    "",
    "| version | examples/s (median; rounds) |",
    "|---|---|",
  ]
  for name, values in rates.items():
    rounds = ", ".join(f"{v:,.0f}" for v in values)
    lines.append(f"| {name} | {np.median(values):,.0f} ({rounds}) |")
  lines += [
    "",
    f"HEAD / baseline: **{np.median(pairs):.2f}x** (median of the "
    f"rounds' ratios: {', '.join(f'{p:.2f}' for p in pairs)}).",
  ]
  report = "\n".join(lines) + "\n"
  print(report)
  if args.out:
    atomic.write_text(args.out, report)


if __name__ == "__main__":
  main()
