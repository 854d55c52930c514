"""The whole pipeline at growing corpus sizes: time and memory per stage.

For each corpus size N (items of the synthetic source; N / 10 users, at
least 1000, and `--per_item` interactions drawn per item) the binaries run
as a user runs them: prepare_data, train (one epoch), export, build_index
(ScaNN above `index.exact_below` items, tuned and audited against exact
search) and evaluate (full-corpus exact metrics on a seeded sample of
`--eval_pairs` test pairs: every item is a candidate, but scoring every
pair would cost users x items, quadratic here as users grow with items);
`--index_bench_out` then compares the index methods on the largest run's
trained embeddings (bench/index_bench.py --workdir). Each
stage is one process: its wall time and its peak resident memory
(`ru_maxrss` of that process, from `os.wait4`) are recorded, and for each
stage the growth with N is the slope of a least-squares fit of log(time)
and log(memory) on log(N) (1 = linear; 2 = quadratic, a defect for any
stage).

Usage:
  .venv/bin/python bench/scale.py [--sizes 20000,200000,1000000]
      [--per_item 10] [--out bench/results/scale.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from tfr_ssl import atomic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("prepare_data", "train", "export", "build_index", "evaluate")


def run_stage(
  name: str, flags: list[str], log_path: str, script: str = ""
) -> dict:
  """Runs `pipelines.<name>` (or `script`); wall time (s), peak RSS (MiB)."""
  command = [script] if script else ["-m", f"pipelines.{name}"]
  with open(log_path, "a") as log:
    log.write(f"\n$ {' '.join(command)} {' '.join(flags)}\n")
    log.flush()
    start = time.perf_counter()
    process = subprocess.Popen(
      [sys.executable, *command, *flags],
      cwd=REPO,
      # A script's own directory is first on its path: put the repository
      # there too, so it imports this checkout's package.
      env={
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
          filter(None, [REPO, os.environ.get("PYTHONPATH")])
        ),
      },
      stdout=log,
      stderr=subprocess.STDOUT,
    )
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
  if process.returncode:
    raise RuntimeError(f"{name} failed: see {log_path}")
  return {"seconds": seconds, "peak_mib": usage.ru_maxrss / 1024}


def run_size(num_items: int, args, root: str) -> dict:
  cache = os.path.join(root, f"cache_{num_items}")
  workdir = os.path.join(root, f"run_{num_items}")
  log = os.path.join(args.log_dir, f"scale_{num_items}.log")
  data = [
    f"--cache_dir={cache}",
    f"--num_items={num_items}",
    f"--num_users={max(1000, num_items // 10)}",
    f"--num_interactions={args.per_item * num_items}",
  ]
  stages = {
    "prepare_data": data,
    "train": [
      f"--workdir={workdir}",
      *data,
      "--epochs=1",
      f"--validation_examples={args.validation_examples}",
      "--log_every=200",
      "--checkpoint_every=1000000",
    ],
    "export": [f"--workdir={workdir}"],
    "build_index": [f"--workdir={workdir}"],
    "evaluate": [f"--workdir={workdir}", f"--max_pairs={args.eval_pairs}"],
  }
  result = {}
  for name in STAGES:
    result[name] = run_stage(name, stages[name], log)
    print(
      f"{num_items:>9,} items {name:<12} {result[name]['seconds']:8.1f} s "
      f"{result[name]['peak_mib']:8.0f} MiB",
      flush=True,
    )
  with open(os.path.join(workdir, "train_metrics.json")) as f:
    result["train"]["steps"] = json.load(f)["steps"]
  with open(os.path.join(workdir, "index", "manifest.json")) as f:
    result["index"] = json.load(f)
  with open(os.path.join(workdir, "eval", "metrics.json")) as f:
    metrics = json.load(f)
  result["recall@100"] = metrics.get("recall@100")
  if args.index_bench_out and num_items == max(args.size_list):
    # The index methods compared on this run's trained embeddings.
    run_stage(
      "index_bench",
      [f"--workdir={workdir}", f"--out={args.index_bench_out}"],
      log,
      script=os.path.join(REPO, "bench", "index_bench.py"),
    )
  shutil.rmtree(workdir, ignore_errors=True)
  shutil.rmtree(cache, ignore_errors=True)
  return result


def slope(sizes, values) -> float:
  """Least-squares slope of log(values) on log(sizes)."""
  if len(sizes) < 2:
    return float("nan")
  return float(np.polyfit(np.log(sizes), np.log(values), 1)[0])


def index_summary(manifest: dict) -> str:
  """The index's kind, audited recall and speed, from its manifest."""
  index = manifest.get("index", {})
  speed = manifest.get("speed", {}) or {}
  text = f"{index.get('kind', '?')}"
  if manifest.get("audit") is not None:
    text += f", audit recall@{manifest.get('k', '?')} {manifest['audit']:.3f}"
  if speed:
    text += (
      f", {speed.get('index_qps', 0):,.0f} queries/s batched vs exact "
      f"{speed.get('exact_qps', 0):,.0f} ({speed.get('speedup', 0):.1f}x)"
    )
  return text


def report(args, sizes, results, seconds) -> str:
  lines = [
    "# The pipeline at growing corpus sizes",
    "",
    f"Command: `.venv/bin/python bench/scale.py {' '.join(sys.argv[1:])}`",
    "",
    f"Machine: {platform.platform()}, {os.cpu_count()} cores (shared), "
    f"Python {platform.python_version()}; wall time {seconds / 60:.1f} min.",
    "",
    f"Synthetic source, users = items / 10, {args.per_item} interactions drawn "
    "per item; default model and batch; one training epoch; evaluation of "
    f"{args.eval_pairs or 'all'} test pairs against the whole corpus; each "
    "stage one process (wall time, peak RSS of that process).",
    "",
    "| items | "
    + " | ".join(f"{s} s / MiB" for s in STAGES)
    + " | total s | train steps | test recall@100 |",
    "|---" * (len(STAGES) + 4) + "|",
  ]
  for size in sizes:
    r = results[size]
    cells = " | ".join(
      f"{r[s]['seconds']:.0f} / {r[s]['peak_mib']:,.0f}" for s in STAGES
    )
    total = sum(r[s]["seconds"] for s in STAGES)
    recall = r["recall@100"]
    lines.append(
      f"| {size:,} | {cells} | {total:.0f} | {r['train']['steps']:,} | "
      + (f"{recall:.3f}" if recall is not None else "-")
      + " |"
    )
  lines += [
    "",
    "Growth with the corpus (slope of log-log fits over the sizes run):",
    "",
    "| stage | time exponent | memory exponent |",
    "|---|---|---|",
  ]
  for stage in STAGES:
    times = [results[s][stage]["seconds"] for s in sizes]
    mems = [results[s][stage]["peak_mib"] for s in sizes]
    lines.append(
      f"| {stage} | {slope(sizes, times):.2f} | {slope(sizes, mems):.2f} |"
    )
  lines += ["", "Indexes built:", ""]
  for size in sizes:
    lines.append(f"- {size:,} items: {index_summary(results[size]['index'])}")
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="20000,200000,1000000")
  parser.add_argument("--per_item", type=int, default=10)
  parser.add_argument("--validation_examples", type=int, default=5000)
  parser.add_argument(
    "--eval_pairs",
    type=int,
    default=20_000,
    help="Test pairs the evaluate stage scores (0 = all). Scoring every "
    "pair costs users x items, quadratic here as users grow with items.",
  )
  parser.add_argument("--log_dir", default=tempfile.gettempdir())
  parser.add_argument("--out", default="")
  parser.add_argument("--json", default="")
  parser.add_argument(
    "--index_bench_out",
    default="",
    help="Also run bench/index_bench.py on the largest size's trained run "
    "and write its report here.",
  )
  args = parser.parse_args()
  sizes = [int(s) for s in args.sizes.split(",")]
  args.size_list = sizes
  root = tempfile.mkdtemp(prefix="scale_")
  started = time.perf_counter()
  results = {}
  try:
    for size in sizes:
      results[size] = run_size(size, args, root)
      if args.json:
        atomic.write_json(args.json, {str(k): v for k, v in results.items()})
  finally:
    shutil.rmtree(root, ignore_errors=True)
  text = report(args, sizes, results, time.perf_counter() - started)
  print(text)
  if args.out:
    atomic.write_text(args.out, text)


if __name__ == "__main__":
  main()
