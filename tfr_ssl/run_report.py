"""What a run made and measured, as text: the `report` binary and index line.

Presentation only: reads the workdir contract of docs/architecture.md
(config, checkpoints, TensorBoard, export, index manifest, eval metrics) and
formats it; nothing here computes a figure or writes a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from tfr_ssl import evaluate, train
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
      lines.append(evaluate.format_metrics(json.load(f)))
  return "\n".join(lines)
