"""bench/ablation.py and its report: plan, noise marks, tables, targets and
plot, without training."""

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

from tfr_ssl.config import Config

# The most-popular figures of every fake evaluation: overall R@10, the
# sparse users' R@10 and the held-out users' R@10.
POPULAR_R10, POPULAR_SPARSE10, POPULAR_HELD10 = 0.10, 0.02, 0.05


def _metrics(
  r10,
  *,
  head100=0.5,
  tail100=0.5,
  tail10=0.1,
  cold100=0.2,
  sparse10=None,
  held10=None,
  popular=False,
):
  """A test evaluation; without `sparse10` / `held10` it has no user
  slices / held-out users (an older or id-only metrics.json)."""
  slices = {
    "head": {"num_items": 3, "num_pairs": 30, "recall@10": 0.3},
    "tail": {"num_items": 20, "num_pairs": 60, "recall@10": tail10},
    "cold": {"num_items": 5, "num_pairs": 10, "recall@10": 0.0},
  }
  slices["head"]["recall@100"] = head100
  slices["tail"]["recall@100"] = tail100
  slices["cold"]["recall@100"] = cold100
  metrics = {
    "split": "test",
    "num_pairs": 100,
    "num_queries": 40,
    "num_items": 28,
    "recall@10": r10,
    "recall@100": 0.6,
    "slices": slices,
  }
  if sparse10 is not None:
    metrics["user_slices"] = {
      "sparse": {
        "num_pairs": 12,
        "num_queries": 9,
        "recall@10": sparse10,
        "recall@50": 0.3,
        "recall@100": 0.4,
      },
      "active": {
        "num_pairs": 88,
        "num_queries": 31,
        "recall@10": 0.2,
        "recall@50": 0.4,
        "recall@100": 0.6,
      },
    }
  if held10 is not None:
    metrics["heldout_users"] = {
      "recall@10": held10,
      "recall@100": 0.45,
      "num_users": 4,
      "num_pairs": 20,
      "folded_in": 70,
      "slices": {},
      "most_popular": {"recall@10": POPULAR_HELD10, "recall@100": 0.25},
    }
  if not popular:
    metrics["baseline"] = {
      "most_popular": _metrics(
        POPULAR_R10, sparse10=POPULAR_SPARSE10, popular=True
      )
    }
  return metrics


def _result(variant, seed, r10, fraction=1.0, data="synthetic", **kw):
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
    "metrics": _metrics(r10, **kw),
  }


def _report(argv, results):
  args = ablation.parse_args(argv)
  return ablation_report.report(args, argv, results, 60.0, ablation.plan(args))


def test_compare_marks_noise():
  a, b = np.array([0.10, 0.11]), np.array([0.12, 0.13])
  assert ablation_report.compare(a, b)["mark"] == "*"
  assert ablation_report.compare(a, np.array([0.105, 0.2]))["mark"] == "~"
  assert ablation_report.compare(a, np.array([0.2]))["mark"] == "?"
  assert ablation_report.compare(np.array([0.0, 0.0]), b) is None
  assert ablation_report.compare(a, b)["change"] == pytest.approx(
    100 * (0.125 / 0.105 - 1)
  )


def test_plan_runs_the_study_variants_with_their_overrides():
  args = ablation.parse_args(
    ["--data=synthetic,ml100k", "--ml100k_dir=/x", "--seeds=0"]
  )
  runs = ablation.plan(args)
  variants = list(ablation_report.DEFAULT_VARIANTS)
  assert variants == [
    "idonly",
    "idonly_item",
    "hist",
    "hist_item",
    "hist_user",
    "hist_both",
    "hist_item_raw",
    "default",
  ]
  # 2 datasets x 2 fractions (1, 0.1) x 1 seed x 8 variants.
  assert len(runs) == 2 * 2 * 8
  assert [r["variant"] for r in runs[:8]] == variants
  assert runs[0]["workdir"].endswith(os.path.join("synthetic", "idonly-f1-s0"))
  configs = {r["variant"]: ablation.config_of(r) for r in runs[:8]}
  base = Config()
  user = base.ssl.user_alpha if base.ssl.user_alpha > 0 else 0.1
  # (history_length, ssl.alpha, ssl.user_alpha, ssl.dependence) per
  # variant: history 0 for the id-only ones, the default length else; item
  # SSL at the default alpha; user SSL at --user_alpha's default.
  hist = base.model.history_length
  alpha = base.ssl.alpha
  expected = {
    "idonly": (0, 0.0, 0.0, "corrected"),
    "idonly_item": (0, alpha, 0.0, "corrected"),
    "hist": (hist, 0.0, 0.0, "corrected"),
    "hist_item": (hist, alpha, 0.0, "corrected"),
    "hist_user": (hist, 0.0, user, "corrected"),
    "hist_both": (hist, alpha, user, "corrected"),
    "hist_item_raw": (hist, alpha, 0.0, "raw_mi"),
  }
  for v, want in expected.items():
    c = configs[v]
    got = (
      c.model.history_length,
      c.ssl.alpha,
      c.ssl.user_alpha,
      c.ssl.dependence,
    )
    assert got == want, v
    assert c.model.logq == "static", v
    assert c.model.id_dropout == base.model.id_dropout, v
    if c.ssl.alpha:
      assert c.ssl.masking == "cfm", v
  assert hist > 0 and alpha > 0  # else the plan above would test nothing
  # Every variant but default states the user weight and the correction,
  # so that a change of their defaults leaves the study as it is.
  for r in runs[:7]:
    assert r["overrides"]["model.logq"] == "static", r["variant"]
    assert r["overrides"]["ssl.user_alpha"] in (0.0, user), r["variant"]
  # `default` has no setting of its own: only the per-run keys.
  default = runs[7]
  assert default["variant"] == "default"
  assert all(
    key.startswith(("data.", "train.")) for key in default["overrides"]
  )
  for key in ablation_report.VARIANT_KEYS:
    assert ablation_report.config_value(
      configs["default"], key
    ) == ablation_report.config_value(base, key)
  # The user task needs a history (the model refuses it without one).
  for c in configs.values():
    assert c.ssl.user_alpha == 0 or c.model.history_length > 0
  ml = next(r for r in runs if r["data"] == "ml100k")
  assert ml["overrides"]["data.split"] == "temporal"
  assert ablation.config_of(ml).data.data_dir == "/x"
  sparse = next(r for r in runs if r["fraction"] == 0.1)
  assert sparse["overrides"]["train.epochs"] == 30


def test_plan_flags_set_and_the_kept_baselines():
  args = ablation.parse_args(
    [
      "--fractions=1",
      "--seeds=0",
      "--variants=hist_both,plain,logq,hist,default",
      "--user_alpha=0.25",
      "--set=ssl.alpha=0.5",
      "--set=model.history_length=7",
    ]
  )
  configs = {r["variant"]: ablation.config_of(r) for r in ablation.plan(args)}
  assert list(configs) == ["plain", "logq", "hist", "hist_both", "default"]
  plain, logq = configs["plain"], configs["logq"]
  assert (plain.model.logq, logq.model.logq) == ("none", "static")
  for c in (plain, logq):
    assert c.model.history_length == 0 and c.ssl.alpha == 0
    assert c.model.id_dropout == 0 and c.ssl.user_alpha == 0
  # --set reaches what a variant leaves alone (hist_both's item-SSL
  # weight, every history length but the id-only ones', all of default),
  # never what a variant states (hist's alpha 0).
  assert configs["hist_both"].ssl.alpha == 0.5
  assert configs["hist_both"].ssl.user_alpha == 0.25
  assert configs["hist"].ssl.alpha == 0.0
  assert configs["hist"].model.history_length == 7
  assert configs["default"].model.history_length == 7
  assert configs["default"].ssl.alpha == 0.5


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--user_alpha=0"], "error: --user_alpha must be > 0"),
    (["--variants=cfm"], "error: --variants: unknown ['cfm']"),
    (["--seeds=a"], "error: --fractions / --seeds: "),
    (["--set=train.seed=3"], "error: --set train.seed: use --seeds"),
  ],
)
def test_bad_flags_are_one_line(argv, message):
  with pytest.raises(SystemExit) as e:
    ablation.plan(ablation.parse_args(argv))
  assert str(e.value).startswith(message)
  assert "\n" not in str(e.value)


def test_report_columns_sparse_and_heldout_users(tmp_path):
  results = []
  for seed in (0, 1):
    results += [
      # An id-only run's evaluation from before user slices: no figures.
      _result("idonly", seed, 0.10),
      _result("hist", seed, 0.12, sparse10=0.04 + 0.02 * seed, held10=0.09),
    ]
  text = _report(["--fractions=1", "--seeds=0,1"], results)
  head = (
    "| variant | seeds | R@10 | R@100 | head R@10 | head R@100 | tail R@10 "
    "| tail R@100 | cold R@10 | cold R@100 | sparse users R@10 | sparse "
    "users R@100 | held-out users R@10 | held-out users R@100 |"
  )
  assert head in text
  # sparse R@10 over seeds: 0.04, 0.06, mean 0.05, sd sqrt(2 * 0.01**2)
  # = 0.0141; R@100 0.4 and held-out 0.09 / 0.45 on both seeds.
  assert (
    "| hist | 2 | 0.1200 ± 0.0000 | 0.6000 ± 0.0000 | 0.3000 ± 0.0000 | "
    "0.5000 ± 0.0000 | 0.1000 ± 0.0000 | 0.5000 ± 0.0000 | 0.0000 ± 0.0000 "
    "| 0.2000 ± 0.0000 | 0.0500 ± 0.0141 | 0.4000 ± 0.0000 | 0.0900 ± "
    "0.0000 | 0.4500 ± 0.0000 |" in text
  )
  idonly_row = next(x for x in text.splitlines() if x.startswith("| idonly |"))
  assert idonly_row.endswith("| - | - | - | - |")
  # Most popular: sparse users from baseline.most_popular.user_slices,
  # held-out users from heldout_users.most_popular.
  assert (
    "| most popular | - | 0.1000 | 0.6000 | 0.3000 | 0.5000 | 0.1000 | "
    "0.5000 | 0.0000 | 0.2000 | 0.0200 | 0.4000 | 0.0500 | 0.2500 |" in text
  )
  # hist vs idonly: +20.0% overall; the user columns have no idonly side.
  row = next(x for x in text.splitlines() if x.startswith("| hist vs idonly"))
  assert row.startswith("| hist vs idonly | +20.0% * | +0.0% ~ |")
  assert row.endswith("| - | - | - | - |")
  # The sizes of every set, though idonly's evaluations lack two of them.
  assert (
    "Test split: 100 pairs, 40 queries, 28 corpus items; head 3 items / 30 "
    "pairs; tail 20 items / 60 pairs; cold 5 items / 10 pairs; sparse: 9 "
    "users / 12 pairs; active: 31 users / 88 pairs; held-out: 4 users / 20 "
    "pairs (70 interactions folded in)." in text
  )
  runs = [x for x in text.splitlines() if x.startswith("- synthetic")]
  assert runs[0] == (
    "- synthetic idonly-f1-s0: 0.1000, 0.6000, 0.1000, 0.2000, -, -; best "
    "epoch 2; validation 0.100"
  )
  assert runs[1].startswith(
    "- synthetic hist-f1-s0: 0.1200, 0.6000, 0.1000, 0.2000, 0.0400, 0.0900;"
  )
  path = tmp_path / "plot.png"
  ablation_report.plot(results, str(path))
  assert path.read_bytes()[:4] == b"\x89PNG"


def _target_results():
  """Two seeds with equal figures (so a difference is beyond noise, `*`,
  and an equality within it, `~`), most popular at R@10 0.10 and held-out
  R@10 0.05 everywhere. Other figures default to _metrics's (head R@100
  and tail R@100 0.5)."""
  runs = [
    # synthetic, full data: hist 0.12 vs idonly 0.10; default held out
    # 0.10.
    ("synthetic", 1.0, "idonly", 0.10, {}),
    ("synthetic", 1.0, "hist", 0.12, {}),
    ("synthetic", 1.0, "default", 0.12, {"held10": 0.10}),
    # synthetic, 0.1: hist_item the best SSL variant, tail R@100 0.7.
    ("synthetic", 0.1, "hist", 0.10, {}),
    ("synthetic", 0.1, "hist_item", 0.115, {"tail100": 0.7}),
    ("synthetic", 0.1, "hist_user", 0.105, {}),
    ("synthetic", 0.1, "default", 0.13, {"held10": 0.06}),
    # ml1m, 0.1 only: hist_both the best, tail R@100 unchanged; no
    # held-out users in default's evaluation.
    ("ml1m", 0.1, "hist", 0.10, {}),
    ("ml1m", 0.1, "hist_both", 0.112, {}),
    ("ml1m", 0.1, "default", 0.13, {}),
  ]
  return [
    _result(v, seed, r10, fraction=f, data=d, **kw)
    for d, f, v, r10, kw in runs
    for seed in (0, 1)
  ]


def test_targets_from_the_numbers():
  text = _report(
    ["--data=synthetic,ml1m", "--ml1m_dir=/x", "--seeds=0,1"],
    _target_results(),
  )
  lines = text.splitlines()
  section = lines[lines.index("## Targets") :]

  def line(prefix):
    return next(x for x in section if x.startswith(prefix))

  # (a) default at 0.1: 0.13 vs 0.10 on both datasets, +30% >= +25%.
  assert line("(a)") == (
    "(a) At train_fraction 0.1, `default` Recall@10 >= most popular's + 25% "
    "on every dataset: **met** (synthetic: 0.1300 vs most popular 0.1000 "
    "(+30.0% *); ml1m: 0.1300 vs most popular 0.1000 (+30.0% *))."
  )
  # (b) synthetic 0.12 / 0.10 = +20% beyond noise; ml1m has no full-data
  # run, so the target cannot be called met.
  assert line("(b)") == (
    "(b) Full data, `hist` vs `idonly` Recall@10 >= +10% beyond noise on "
    "synthetic and ml1m: **not measured** (synthetic: +20.0% *; ml1m: not "
    "run)."
  )
  # (c) full data: held-out 0.10 = 2.0 x most popular's 0.05 and 0.83 x
  # test 0.12: met. At 0.1, synthetic's 0.06 is 1.2 x 0.05 < 1.5 x: not met
  # (ml1m's evaluation has no held-out users).
  assert line("(c) train_fraction 1,").endswith(
    "**met** (synthetic: 0.1000 vs most popular 0.0500 (x2.00), vs test "
    "0.1200 (x0.83))."
  )
  assert line("(c) train_fraction 0.1,").endswith(
    "**not met** (synthetic: 0.0600 vs most popular 0.0500 (x1.20), vs test "
    "0.1300 (x0.46); ml1m: no held-out users evaluated)."
  )
  # (d1) hist_item +15% (synthetic), hist_both +12% (ml1m), both beyond
  # noise: two datasets, met.
  assert line("(d1)").endswith(
    "**met** (synthetic: `hist_item` +15.0% *; ml1m: `hist_both` +12.0% *)."
  )
  # (d2) synthetic: tail R@100 0.7 / 0.5 = +40% above head's +0%; ml1m:
  # tail +0% is not above head +0%. One dataset of two: not met.
  assert line("(d2)").endswith(
    "**not met** (synthetic: `hist_item` tail R@100 +40.0% * vs head R@100 "
    "+0.0% ~; ml1m: `hist_both` tail R@100 +0.0% ~ vs head R@100 +0.0% ~)."
  )


def test_targets_without_their_runs_are_not_measured():
  # Full data only: nothing at fraction 0.1, no hist / SSL runs.
  results = [
    r for r in _target_results() if r["fraction"] == 1.0 and r["seed"] == 0
  ]
  text = _report(["--fractions=1", "--seeds=0"], results)
  assert (
    "(a) At train_fraction 0.1, `default` Recall@10 >= most popular's + 25% "
    "on every dataset: **not measured** (no `default` run at that "
    "fraction)." in text
  )
  # One seed: +20% with noise unknown (`?`) is not measured, not met.
  assert "on synthetic and ml1m: **not measured** (synthetic: +20.0% ?;" in text
  assert "(d) SSL at train_fraction 0.1: **not measured**" in text


def test_lift_check():
  check = ablation_report._lift_check
  assert check({"change": 12.0, "mark": "*"}, 10.0) is True
  assert check({"change": 12.0, "mark": "~"}, 10.0) is False
  assert check({"change": 12.0, "mark": "?"}, 10.0) is None
  # Too small is not met, whatever the noise.
  assert check({"change": 5.0, "mark": "?"}, 10.0) is False
  assert check(None, 10.0) is None


def test_from_json_reports_the_wanted_runs_of_every_file(tmp_path, capsys):
  # Two earlier invocations: seeds 0 and 1 of idonly / hist / hist_item,
  # then seed 2 of the same; the records carry the planned overrides and
  # workdir.
  def invocation(seed, name):
    argv = [
      f"--seeds={seed}",
      "--fractions=1",
      "--variants=idonly,hist,hist_item",
    ]
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
      "--variants=hist,hist_item,hist_user",  # no idonly; no hist_user run
      f"--out={out}",
    ]
  )
  text = out.read_text()
  assert text == capsys.readouterr().out[: len(text)]
  runs = [line for line in text.splitlines() if line.startswith("- ")]
  assert runs == [
    f"- synthetic {name}: {r10}, 0.6000, 0.1000, 0.2000, -, -; best epoch 2; "
    "validation 0.100"
    for r10, name in (
      ("0.1100", "hist-f1-s1"),
      ("0.1100", "hist_item-f1-s1"),
      ("0.1200", "hist-f1-s2"),
      ("0.1200", "hist_item-f1-s2"),
    )
  ]
  # The wall time is the runs' training time: 4 runs x 1 s = 0.07 min,
  # shown to one decimal.
  assert "Wall time of this invocation 0.1 min" in text
  assert "(4 of 4 runs trained by this invocation)" in text
  # The variant table lists only the variants that have runs.
  assert "| hist (history query tower, no SSL) |" in text
  assert "| hist_user (" not in text and "| idonly (" not in text
  # Same seeds, same figures: no change, within noise.
  assert "| hist_item vs hist | +0.0% ~ |" in text


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


def test_a_variant_with_the_default_settings_stands_for_default():
  # hist_item's overrides change nothing of the model and SSL sections
  # (only the seed and the data), so it is `Config()`'s model; hist turns
  # the item SSL off, so it is not.
  runs = [
    {**_result("hist", 0, 0.1), "overrides": {"ssl.alpha": 0.0}},
    {**_result("hist_item", 0, 0.2), "overrides": {"train.seed": 0}},
  ]
  assert ablation_report.default_twin(runs) == "hist_item"
  assert ablation_report.default_twin(runs[:1]) is None
