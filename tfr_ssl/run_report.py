"""What a run made and measured, as text: metrics, the index line, a run.

Presentation only: reads the workdir contract of docs/architecture.md
(config, checkpoints, TensorBoard, export, index manifest, eval metrics) and
formats it; nothing here computes a figure or writes a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from tfr_ssl.training import train
from tfr_ssl.workflow import EVAL_DIR, EXPORT_DIR, INDEX_DIR


def describe_index(manifest: Mapping) -> str:
  """One line on an index: its kind, audit recall and speed vs exact."""
  settings = manifest["index"]
  kind = settings["kind"]
  if kind == "scann":
    kind = (
      f"ScaNN ({settings['num_leaves']} leaves, "
      f"{settings['num_leaves_to_search']} searched, reorder "
      f"{settings['num_reordering_candidates']})"
    )
  speed = manifest["speed"]
  return (
    f"Index: {kind} over {manifest['num_items']:,} items; "
    f"recall@{manifest['k']} vs exact search {manifest['audit']:.4f}; "
    f"{speed['index_qps']:,.0f} queries/s vs {speed['exact_qps']:,.0f} "
    f"exact ({speed['speedup']:.2f}x)"
  )


def report(workdir: str) -> str:
  """A human summary of a run's artifacts and figures."""
  workdir = os.path.abspath(workdir)
  lines = [f"Run {workdir}"]
  artifacts = [
    ("config", "config.json"),
    ("checkpoints", train.CHECKPOINT_DIR),
    ("tensorboard", "tensorboard"),
    ("exported towers", EXPORT_DIR),
    ("retrieval index", INDEX_DIR),
    ("metrics and plot", EVAL_DIR),
  ]
  for label, name in artifacts:
    path = os.path.join(workdir, name)
    mark = path if os.path.exists(path) else f"(missing) {path}"
    lines.append(f"  {label:17s} {mark}")
  summary_path = os.path.join(workdir, "train_metrics.json")
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      summary = json.load(f)
    lines.append(f"Training: {summary['steps']} steps")
    for entry in summary["validation"]:
      lines.append(f"  validation after epoch {entry['epoch']}: {entry}")
  index_manifest = os.path.join(workdir, INDEX_DIR, "manifest.json")
  if os.path.exists(index_manifest):
    with open(index_manifest) as f:
      manifest = json.load(f)
    lines.append(describe_index(manifest))
  metrics_path = os.path.join(workdir, EVAL_DIR, "metrics.json")
  if os.path.exists(metrics_path):
    with open(metrics_path) as f:
      lines.append(format_metrics(json.load(f)))
  return "\n".join(lines)


def format_metrics(metrics: Mapping[str, Any]) -> str:
  """A few human-readable lines: what was scored, overall, slices, deciles.

  With a baseline (`metrics["baseline"]["most_popular"]`, as written by
  `workflow.evaluate_run`) its figures are printed beside the model's.
  With `metrics["evaluated"]` and `metrics["protocol"]` (also written by
  `workflow.evaluate_run`) the checkpoint evaluated and the selection rules
  and their counts are named, and every slice figure says what it counts.

  Example:
    >>> print(format_metrics(metrics))
    12,000 pairs, 950 queries (excluded: train, validation)
    evaluated: epoch 3 (step 1,200; best validation recall@10), test split,
      exact search
    pairs: every test pair with a query; 2 repeated pairs scored once
    model         recall@10 0.1200  recall@50 0.3100  map@10 0.0610 ...
    most popular  recall@10 0.0400  recall@50 0.1100  map@10 0.0150 ...
    slices by training interactions: head = the 10% most frequent of the
      items in them, tail = the other items in them, cold = items in none
    head (371 corpus items, 300 held out, 8,100 pairs): recall@10 ...
  """
  ks = metrics.get("ks", [])
  baseline = metrics.get("baseline", {}).get("most_popular")
  header = (
    f"{metrics.get('num_pairs', 0):,} pairs, "
    f"{metrics.get('num_queries', 0):,} queries"
  )
  if metrics.get("excluded"):
    header += f" (excluded: {', '.join(metrics['excluded'])})"
  lines = [header]
  if metrics.get("evaluated"):
    lines.append(_describe_evaluated(metrics))
  if metrics.get("protocol"):
    lines.append(_describe_selection(metrics["protocol"]))

  def overall(values):
    return "  ".join(
      f"{kind}@{k} {_number(values.get(f'{kind}@{k}'))}"
      for kind in ("recall", "map")
      for k in ks
    )

  def recalls(row):
    return "  ".join(f"recall@{k} {_number(row[f'recall@{k}'])}" for k in ks)

  if baseline is None:
    lines.append(overall(metrics))
  else:
    lines.append(f"{'model':13s} {overall(metrics)}")
    lines.append(f"{'most popular':13s} {overall(baseline)}")
  if metrics.get("slices"):
    trained_rows = metrics.get("protocol", {}).get(
      "train_counts", "training interactions"
    )
    share = metrics.get("head_fraction")
    top = f"the {share:.0%} most frequent" if share is not None else "the most"
    lines.append(
      f"slices by {trained_rows}: head = {top} of the items in them, "
      "tail = the other items in them, cold = items in none"
    )
  for name, row in metrics.get("slices", {}).items():
    held_out = ""
    if "num_held_out_items" in row:
      held_out = f"{row['num_held_out_items']:,} held out, "
    line = (
      f"{name} ({row['num_items']:,} corpus items, {held_out}"
      f"{row['num_pairs']:,} pairs): {recalls(row)}"
    )
    if baseline is not None and name in baseline.get("slices", {}):
      line += f" | most popular: {recalls(baseline['slices'][name])}"
    lines.append(line)
  for name, row in metrics.get("user_slices", {}).items():
    line = (
      f"{name} users ({row['num_queries']:,} users, {row['num_pairs']:,} "
      f"pairs): {recalls(row)}"
    )
    base = (baseline or {}).get("user_slices", {}).get(name)
    if base is not None:
      line += f" | most popular: {recalls(base)}"
    lines.append(line)
  held = metrics.get("heldout_users")
  if held:
    lines.append(
      f"held-out users ({held['num_users']:,} never trained on, "
      f"{held['folded_in']:,} interactions folded in as history, "
      f"{held['num_pairs']:,} pairs): {recalls(held)} | most popular: "
      f"{recalls(held['most_popular'])}"
    )
  if metrics.get("deciles") and ks:
    k = ks[0]
    runs = [("", metrics)]
    if baseline is not None and baseline.get("deciles"):
      runs.append(("most popular ", baseline))
    for label, values in runs:
      by_decile = " ".join(
        _number(row[f"recall@{k}"], 3) for row in values["deciles"]
      )
      lines.append(f"{label}recall@{k} by decile (rarest first): {by_decile}")
  return "\n".join(lines)


def _describe_evaluated(metrics: Mapping[str, Any]) -> str:
  """`evaluated: epoch 3 (step 1,200; best validation recall@10), ...`."""
  evaluated = metrics["evaluated"]
  if evaluated.get("epoch") is not None:
    model = f"epoch {evaluated['epoch']}"
    if evaluated.get("step") is not None:
      model += f" (step {evaluated['step']:,}; {evaluated['selected_by']})"
    else:
      model += f" ({evaluated['selected_by']})"
  elif evaluated.get("step") is not None:
    model = f"step {evaluated['step']:,} ({evaluated['selected_by']})"
  else:
    model = f"{evaluated['checkpoint']} ({evaluated['selected_by']})"
  line = f"evaluated: {model}"
  if metrics.get("split"):
    line += f", {metrics['split']} split"
  if metrics.get("search"):
    line += f", {metrics['search']} search"
  return line


def _describe_selection(protocol: Mapping[str, Any]) -> str:
  """`pairs: ...`: the sample, duplicates and known pairs dropped."""
  split = protocol.get("split", "held-out")
  sampling = protocol.get("sampling", {})
  if sampling.get("unit") == "query":
    parts = [
      f"a sample of {sampling['num_queries']:,} of "
      f"{sampling['of_queries']:,} queries with all their pairs "
      f"({sampling['num_pairs']:,} of {sampling['of_pairs']:,} pairs; "
      f"--max_pairs={sampling['max_pairs']:,}, seed {sampling['seed']})"
    ]
  else:
    parts = [f"every {split} pair with a query"]
  duplicates = protocol.get("duplicates_removed", 0)
  if duplicates:
    parts.append(f"{duplicates:,} repeated pairs scored once")
  dropped = protocol.get("known_pairs_dropped", 0)
  if protocol.get("known_pairs") == "dropped":
    earlier = [e for e in protocol.get("excluded", []) if e != "seed_item"]
    parts.append(
      f"{dropped:,} pairs equal to a {' or '.join(earlier)} pair dropped "
      "(neither ranked nor scored)"
    )
  return "pairs: " + "; ".join(parts)


def _number(value, digits=4):
  return "n/a" if value is None else f"{value:.{digits}f}"
