"""bench/ablation.py: plan, noise marks, targets and plot, without training."""

import importlib.util
import os

import numpy as np
import pytest

_PATH = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  "bench",
  "ablation.py",
)
_spec = importlib.util.spec_from_file_location("ablation_bench", _PATH)
ablation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ablation)


def _metrics(r10, tail10=0.1, cold100=0.2, head10=0.3):
  slices = {
    "head": {"num_items": 3, "num_pairs": 30, "recall@10": head10},
    "tail": {"num_items": 20, "num_pairs": 60, "recall@10": tail10},
    "cold": {"num_items": 5, "num_pairs": 10, "recall@10": 0.0},
  }
  for name in slices:
    slices[name]["recall@100"] = 0.5
  slices["cold"]["recall@100"] = cold100
  return {
    "split": "test",
    "num_pairs": 100,
    "num_queries": 40,
    "num_items": 28,
    "recall@10": r10,
    "recall@100": 0.6,
    "slices": slices,
  }


def _result(variant, seed, r10, fraction=1.0, data="synthetic", **kw):
  metrics = _metrics(r10, **kw)
  metrics["baseline"] = {"most_popular": _metrics(0.05)}
  return {
    "data": data,
    "variant": variant,
    "fraction": fraction,
    "seed": seed,
    "steps": 10,
    "train_seconds": 1.0,
    "epochs_run": 3,
    "best_epoch": 2,
    "best_validation_recall@10": 0.1,
    "validation": [{"epoch": 1, "step": 5, "recall@10": 0.1}],
    "retrained": True,
    "metrics": metrics,
  }


def test_compare_marks_noise():
  a, b = np.array([0.10, 0.11]), np.array([0.12, 0.13])
  assert ablation.compare(a, b)["mark"] == "*"
  assert ablation.compare(a, np.array([0.105, 0.2]))["mark"] == "~"
  assert ablation.compare(a, np.array([0.2]))["mark"] == "?"
  assert ablation.compare(np.array([0.0, 0.0]), b) is None
  assert ablation.compare(a, b)["change"] == pytest.approx(
    100 * (0.125 / 0.105 - 1)
  )


def test_plan_variants_and_overrides():
  args = ablation.parse_args(
    [
      "--data=synthetic,ml100k",
      "--ml100k_dir=/x",
      "--fractions=1,0.1",
      "--seeds=0",
      "--variants=iddrop,plain,cfm_proj",
      "--set=model.logq=static",
      "--set=ssl.alpha=0.5",
    ]
  )
  runs = ablation.plan(args)
  assert len(runs) == 2 * 2 * 3
  first = runs[0]
  assert first["variant"] == "plain"  # canonical order
  assert first["workdir"].endswith(os.path.join("synthetic", "plain-f1-s0"))
  # The variant's own settings win over --set.
  assert first["overrides"]["model.logq"] == "none"
  assert first["overrides"]["ssl.alpha"] == 0.0
  proj = next(r for r in runs if r["variant"] == "cfm_proj")
  assert proj["overrides"]["ssl.projection_dim"] == 64
  assert proj["overrides"]["ssl.alpha"] == "0.5"
  sparse = next(r for r in runs if r["fraction"] == 0.1)
  assert sparse["overrides"]["train.epochs"] == 30
  ml = next(r for r in runs if r["data"] == "ml100k")
  assert ml["overrides"]["data.split"] == "temporal"
  assert ablation.config_of(ml).data.data_dir == "/x"
  with pytest.raises(SystemExit):
    ablation.plan(ablation.parse_args(["--set=train.seed=3"]))


def test_report_targets_and_plot(tmp_path):
  results = []
  for seed in (0, 1):
    results += [
      _result("plain", seed, 0.05 + 0.001 * seed),
      _result("logq", seed, 0.10 + 0.001 * seed, tail10=0.10),
      _result("cfm", seed, 0.12 + 0.001 * seed, tail10=0.15, cold100=0.3),
    ]
  args = ablation.parse_args(
    ["--fractions=1", "--seeds=0,1", "--variants=plain,logq,cfm"]
  )
  text = ablation.report(
    args, ["--fractions=1"], results, 60.0, ablation.plan(args)
  )
  assert "| cfm vs logq | +19.9% * |" in text
  assert "| most popular | - | 0.0500 |" in text
  assert (
    "every dataset and better beyond noise on at least one: **met**" in text
  )
  assert "tail +50.0% * vs head +0.0% ~, met" in text
  path = tmp_path / "plot.png"
  ablation.plot(results, str(path))
  assert path.read_bytes()[:4] == b"\x89PNG"
