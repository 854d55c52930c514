"""bench/ablation.py and its report: plan, noise marks, targets and plot,
without training."""

import json
import os
import sys

import numpy as np
import pytest

# The bench scripts import their siblings by name, as when run from bench/.
sys.path.insert(
  0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "bench")
)
import ablation
import ablation_report


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
  assert ablation_report.compare(a, b)["mark"] == "*"
  assert ablation_report.compare(a, np.array([0.105, 0.2]))["mark"] == "~"
  assert ablation_report.compare(a, np.array([0.2]))["mark"] == "?"
  assert ablation_report.compare(np.array([0.0, 0.0]), b) is None
  assert ablation_report.compare(a, b)["change"] == pytest.approx(
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
  text = ablation_report.report(
    args, ["--fractions=1"], results, 60.0, ablation.plan(args)
  )
  assert "| cfm vs logq | +19.9% * |" in text
  assert "| most popular | - | 0.0500 |" in text
  assert (
    "every dataset and better beyond noise on at least one: **met**" in text
  )
  assert "tail +50.0% * vs head +0.0% ~, met" in text
  path = tmp_path / "plot.png"
  ablation_report.plot(results, str(path))
  assert path.read_bytes()[:4] == b"\x89PNG"


def test_from_json_reports_the_wanted_runs_of_every_file(tmp_path, capsys):
  # Two earlier invocations: seeds 0 and 1 of plain / logq / cfm, then
  # seed 2 of the same; the records carry the planned overrides and workdir.
  def invocation(seed, name):
    argv = [f"--seeds={seed}", "--fractions=1", "--variants=plain,logq,cfm"]
    results = [
      {**run, **_result(run["variant"], run["seed"], 0.1 + 0.01 * run["seed"])}
      for run in ablation.plan(ablation.parse_args(argv))
    ]
    path = tmp_path / name
    path.write_text(json.dumps({"argv": argv, "results": results}))
    return str(path)

  first, second = invocation("0,1", "a.json"), invocation("2", "b.json")
  out = tmp_path / "report.md"
  ablation.main(
    [
      f"--from_json={first},{second}",
      "--fractions=1",
      "--seeds=1,2",  # seed 0 of a.json is left out
      "--variants=logq,cfm,iddrop",  # plain is left out; no iddrop run
      f"--out={out}",
    ]
  )
  text = out.read_text()
  assert text == capsys.readouterr().out[: len(text)]
  runs = [line for line in text.splitlines() if line.startswith("- ")]
  assert runs == [
    "- synthetic logq-f1-s1: 0.1100, 0.6000, 0.1000, 0.2000; best epoch 2; "
    "validation 0.100",
    "- synthetic cfm-f1-s1: 0.1100, 0.6000, 0.1000, 0.2000; best epoch 2; "
    "validation 0.100",
    "- synthetic logq-f1-s2: 0.1200, 0.6000, 0.1000, 0.2000; best epoch 2; "
    "validation 0.100",
    "- synthetic cfm-f1-s2: 0.1200, 0.6000, 0.1000, 0.2000; best epoch 2; "
    "validation 0.100",
  ]
  # The wall time is the runs' training time: 4 runs x 1 s = 0.07 min,
  # shown to one decimal.
  assert "Wall time of this invocation 0.1 min" in text
  assert "(4 of 4 runs trained by this invocation)" in text
  # The variant table lists only the variants that have runs.
  assert "| logq (+ streaming logQ) |" in text
  assert "| iddrop (" not in text and "| plain (" not in text
  # Same seeds, same figures: no change, within noise.
  assert "| cfm vs logq | +0.0% ~ |" in text


def test_tune_imports_mean_sd_from_the_report():
  import tune

  assert tune.mean_sd is ablation_report.mean_sd
  # sd (ddof=1) of [0.1, 0.3]: sqrt(2 * 0.1**2 / 1) = 0.1414.
  assert tune.mean_sd(np.array([0.1, 0.3])) == "0.2000 ± 0.1414"
  assert tune.mean_sd(np.array([0.25])) == "0.2500"
  assert tune.mean_sd(np.array([])) == "n/a"


@pytest.mark.parametrize(
  "content, message",
  [
    (None, "no such file."),
    ("{not json", "Expecting property name"),
    ('{"argv": []}', "no `results` list (not a --json file)."),
  ],
)
def test_from_json_bad_file_is_one_line(tmp_path, content, message):
  path = tmp_path / "results.json"
  if content is not None:
    path.write_text(content)
  with pytest.raises(SystemExit) as e:
    ablation.main([f"--from_json={path}"])
  assert str(e.value).startswith(f"error: --from_json {path}: ")
  assert message in str(e.value)
  assert "\n" not in str(e.value)
