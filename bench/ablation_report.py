"""The report of the query-tower / SSL ablation (`bench/ablation.py`).

Everything here reads run records, the entries of the `results` list that
ablation.py writes to `--json` (and reads back with `--from_json`): a run's
data, variant, fraction, seed, config overrides, training summary and test
metrics. It renders the markdown report (split sizes, recall tables
overall, by item slice, on the sparse users and on the held-out users,
the relative changes with their seed-noise marks, best epochs, the
study's targets, one line per run) and the PNG of the slice recalls.
What the report's sections mean is described in ablation.py's docstring.

The variants' names, their order and their labels live here, since every
table and the plot follow them; the settings each variant trains with are
ablation.py's (`variant_overrides`).
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import platform
import shlex
from typing import Any

import numpy as np

import tfr_ssl  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tensorflow)
from tfr_ssl import atomic
from tfr_ssl.config import Config

# The study's variants, in the order of every table and plot colour.
VARIANTS = (
  "plain",
  "logq",
  "idonly",
  "idonly_item",
  "hist",
  "hist_item",
  "hist_user",
  "hist_both",
  "hist_item_raw",
  "default",
)
# What ablation.py runs without --variants: the study (plain and logq are
# the earlier logQ ablation's id-only baselines, kept for reference).
DEFAULT_VARIANTS = VARIANTS[2:]
LABELS = {
  "plain": "id-only query, in-batch softmax, no correction, no id dropout",
  "logq": "id-only query, streaming logQ, no id dropout",
  "idonly": "id-only query, no SSL",
  "idonly_item": "id-only query + item SSL (CFM)",
  "hist": "history query tower, no SSL",
  "hist_item": "history + item SSL (CFM)",
  "hist_user": "history + user SSL",
  "hist_both": "history + item SSL (CFM) + user SSL",
  "hist_item_raw": "history + item SSL (CFM on the raw plug-in MI)",
  "default": "`Config()` as the binaries train it",
}
# (variant, baseline) rows of the relative-change table.
COMPARISONS = (
  ("logq", "plain"),
  # What the history tower brings, without SSL.
  ("hist", "idonly"),
  # Item SSL on either query tower.
  ("idonly_item", "idonly"),
  ("hist_item", "hist"),
  # User SSL, alone and with item SSL.
  ("hist_user", "hist"),
  ("hist_both", "hist"),
  # CFM's dependence measure: the paper's raw MI vs the corrected one.
  ("hist_item_raw", "hist_item"),
  # The shipped configuration against the id-only query.
  ("default", "idonly"),
)
# The SSL variants the SSL target (d) picks the best of (vs `hist`).
SSL_VARIANTS = ("hist_item", "hist_user", "hist_both")
# Pair slices beyond the whole test split: item slices (`slices`), user
# slices (`user_slices`) and the held-out users (`heldout_users`).
ITEM_SLICES = ("head", "tail", "cold")
USER_SLICES = ("sparse", "active")
HELDOUT = "heldout"
SLICE_TITLES = {"sparse": "sparse users", HELDOUT: "held-out users"}
# (slice, K) columns of the tables; "overall" is the whole test split.
COLUMNS = tuple(
  (s, k)
  for s in ("overall", *ITEM_SLICES, "sparse", HELDOUT)
  for k in (10, 100)
)
# The bars of the plot: (slice, K); cold items are rarely in a top 10.
PLOT_BARS = (
  ("overall", 10),
  ("head", 10),
  ("tail", 10),
  ("cold", 100),
  ("sparse", 10),
  (HELDOUT, 10),
)
# The keys a variant may change, shown per variant in the report.
VARIANT_KEYS = (
  "model.logq",
  "model.id_dropout",
  "model.history_length",
  "ssl.alpha",
  "ssl.masking",
  "ssl.dependence",
  "ssl.user_alpha",
)
# Item-SSL keys that mean nothing when `ssl.alpha` is 0.
ITEM_SSL_KEYS = ("ssl.masking", "ssl.dependence")
# Settings every variant shares, shown in the report as they resolve.
SHARED_KEYS = (
  "model.history_pooling",
  "model.query_id",
  "model.temperature",
  "model.embedding_dim",
  "model.output_dim",
  "ssl.key_mode",
  "ssl.projection_dim",
  "ssl.temperature",
  "ssl.batch_size",
  "train.optimizer",
  "train.learning_rate",
  "train.batch_size",
  "train.early_stopping_patience",
  "train.validation_examples",
  "data.heldout_users",
  "eval.sparse_user_max",
  "data.split",
)


def run_name(variant: str, fraction: float, seed: int) -> str:
  """A run's name: its workdir's basename, and its line in the report."""
  return f"{variant}-f{fraction:g}-s{seed}"


def epochs_for(
  args: argparse.Namespace, fraction: float, data: str = ""
) -> int:
  """The max epochs of a run: --sparse_epochs below fraction 1, else the
  dataset's --epochs_by_data entry or --epochs."""
  if fraction < 1.0:
    return args.sparse_epochs
  by_data = dict(
    item.split("=") for item in args.epochs_by_data.split(",") if item
  )
  return int(by_data.get(data, args.epochs))


def config_of(run: dict[str, Any]) -> Config:
  try:
    return Config().override(run["overrides"])
  except ValueError as e:
    raise SystemExit(
      f"error: {os.path.basename(run['workdir'])}: {e}"
    ) from None


def default_twin(runs: list[dict[str, Any]]) -> str | None:
  """The first variant (in `VARIANTS` order) among `runs` whose model and
  SSL settings equal `Config()`'s, or None."""
  defaults = Config()
  for variant in VARIANTS:
    mine = [r for r in runs if r["variant"] == variant]
    if (
      mine
      and all("overrides" in r for r in mine)
      and all(
        config_of(r).model == defaults.model
        and config_of(r).ssl == defaults.ssl
        for r in mine
      )
    ):
      return variant
  return None


def config_value(config: Config, key: str) -> Any:
  return functools.reduce(getattr, key.split("."), config)


# ---------------------------------------------------------------- numbers


def slice_entry(
  metrics: dict[str, Any] | None, slice_name: str, baseline: bool = False
) -> dict[str, Any] | None:
  """The metrics of one set of test pairs; None when the run has none.

  Args:
    metrics: A test evaluation (`workflow.evaluate_run`'s metrics.json).
    slice_name: `overall` (the whole split), an item slice (`slices`), a
      user slice (`user_slices`) or `heldout` (`heldout_users`, the users
      never trained on).
    baseline: The most-popular ranking's metrics on the same pairs instead:
      under `baseline.most_popular`, except for the held-out users, whose
      baseline is `heldout_users.most_popular`.

  Returns:
    The dict holding that set's `recall@K` keys; None when the evaluation
    has no such set (an older metrics.json, an id-only run's, no held-out
    users).
  """
  if not metrics:
    return None
  if slice_name == HELDOUT:
    held = metrics.get("heldout_users")
    return (held or {}).get("most_popular") if baseline else held
  if baseline:
    metrics = (metrics.get("baseline") or {}).get("most_popular")
    if not metrics:
      return None
  if slice_name == "overall":
    return metrics
  group = "user_slices" if slice_name in USER_SLICES else "slices"
  return (metrics.get(group) or {}).get(slice_name)


def recall(
  metrics: dict[str, Any] | None,
  slice_name: str,
  k: int,
  baseline: bool = False,
) -> float | None:
  """Recall@k of a set of pairs (`slice_entry`); None when absent."""
  value = (slice_entry(metrics, slice_name, baseline) or {}).get(f"recall@{k}")
  return None if value is None else float(value)


def values(runs: list[dict], slice_name: str, k: int, baseline=False):
  """Recall@k of each run that has it (of most popular if `baseline`)."""
  out = []
  for r in runs:
    v = recall(r["metrics"], slice_name, k, baseline)
    if v is not None:
      out.append(v)
  return np.array(out, dtype=np.float64)


def fmt(value: float | None) -> str:
  return "-" if value is None else f"{value:.4f}"


def mean_sd(x: np.ndarray) -> str:
  if x.size == 0:
    return "n/a"
  if x.size == 1:
    return f"{x[0]:.4f}"
  return f"{x.mean():.4f} ± {x.std(ddof=1):.4f}"


def compare(base: np.ndarray, other: np.ndarray) -> dict[str, Any] | None:
  """Relative change of mean(other) vs mean(base), with its noise mark.

  `~`: the seeds overlap (not every seed of one side beats every seed of
  the other); `*`: they do not; `?`: a side has fewer than two seeds.
  None when a side is empty or the base mean is 0.
  """
  if base.size == 0 or other.size == 0 or base.mean() == 0:
    return None
  change = 100.0 * (other.mean() / base.mean() - 1.0)
  if min(base.size, other.size) < 2:
    mark = "?"
  elif other.min() > base.max() or other.max() < base.min():
    mark = "*"
  else:
    mark = "~"
  return {"change": change, "mark": mark}


def fmt_change(c: dict[str, Any] | None) -> str:
  return "n/a" if c is None else f"{c['change']:+.1f}% {c['mark']}"


def beyond(c: dict[str, Any] | None, sign: int) -> bool:
  """The change is beyond seed noise in the direction `sign`."""
  return c is not None and c["mark"] == "*" and c["change"] * sign > 0


class Results:
  """The finished runs, grouped by (data, fraction, variant)."""

  def __init__(self, results: list[dict[str, Any]]):
    self.results = results

  def runs(self, data, fraction, variant=None) -> list[dict[str, Any]]:
    found = [
      r
      for r in self.results
      if r["data"] == data
      and r["fraction"] == fraction
      and (variant is None or r["variant"] == variant)
    ]
    if variant == "default" and not found:
      # A variant whose model and SSL settings are the defaults is the
      # default configuration: its runs stand for `default`.
      twin = default_twin(self.runs(data, fraction))
      found = [r for r in self.runs(data, fraction) if r["variant"] == twin]
    return found

  def variants(self, data, fraction) -> list[str]:
    present = {r["variant"] for r in self.runs(data, fraction)}
    return [v for v in VARIANTS if v in present]

  def settings(self) -> list[tuple[str, float]]:
    seen = []
    for r in self.results:
      if (r["data"], r["fraction"]) not in seen:
        seen.append((r["data"], r["fraction"]))
    return seen

  def vals(self, data, fraction, variant, slice_name, k) -> np.ndarray:
    return values(self.runs(data, fraction, variant), slice_name, k)

  def change(self, data, fraction, variant, base, slice_name, k):
    return compare(
      self.vals(data, fraction, base, slice_name, k),
      self.vals(data, fraction, variant, slice_name, k),
    )

  def baseline(self, data, fraction, slice_name, k) -> tuple[np.ndarray, bool]:
    """Most-popular values of the runs, and whether they all agree."""
    x = values(self.runs(data, fraction), slice_name, k, baseline=True)
    return x, bool(x.size == 0 or np.allclose(x, x[0]))


# ---------------------------------------------------------------- report


def _size_parts(m: dict[str, Any]) -> dict[str, str]:
  """The sizes of each set of test pairs an evaluation has, by set."""
  parts = {
    "overall": f"{m.get('num_pairs', 0):,} pairs, {m.get('num_queries', 0):,} "
    f"queries, {m.get('num_items', 0):,} corpus items"
  }
  for name in ITEM_SLICES:
    row = m.get("slices", {}).get(name)
    if row:
      parts[name] = (
        f"{name} {row['num_items']:,} items / {row['num_pairs']:,} pairs"
      )
  for name, row in (m.get("user_slices") or {}).items():
    parts[name] = (
      f"{name}: {row['num_queries']:,} users / {row['num_pairs']:,} pairs"
    )
  held = m.get("heldout_users")
  if held:
    parts[HELDOUT] = (
      f"held-out: {held['num_users']:,} users / {held['num_pairs']:,} "
      f"pairs ({held['folded_in']:,} interactions folded in)"
    )
  return parts


def split_sizes(runs: list[dict[str, Any]]) -> str:
  """The test pairs' sizes, each set once; flagged where runs disagree
  (an evaluation without a set, older or id-only, does not count)."""
  seen: dict[str, list[str]] = {}
  for r in runs:
    for name, text in _size_parts(r["metrics"]).items():
      if text not in seen.setdefault(name, []):
        seen[name].append(text)
  return "; ".join(
    texts[0]
    + (
      f" (**differs across runs**: {len(texts)} versions)"
      if len(texts) > 1
      else ""
    )
    for texts in seen.values()
  )


def column_title(slice_name: str, k: int) -> str:
  """`R@10` for the whole split, `tail R@10`, `held-out users R@10`."""
  if slice_name == "overall":
    return f"R@{k}"
  return f"{SLICE_TITLES.get(slice_name, slice_name)} R@{k}"


def _table_head(first: str) -> list[str]:
  header = [first] + (["seeds"] if first == "variant" else [])
  header += [column_title(s, k) for s, k in COLUMNS]
  return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]


def metric_table(res: Results, data, fraction) -> list[str]:
  """Mean ± sd per variant and column, then the most-popular row; `-`
  where no run has the figure (an older evaluation, no held-out users)."""
  lines = _table_head("variant")
  for v in res.variants(data, fraction):
    runs = res.runs(data, fraction, v)
    cells = [
      mean_sd(x) if x.size else "-"
      for x in (values(runs, s, k) for s, k in COLUMNS)
    ]
    lines.append(f"| {v} | {len(runs)} | " + " | ".join(cells) + " |")
  cells, agree = [], True
  for s, k in COLUMNS:
    x, same = res.baseline(data, fraction, s, k)
    agree &= same
    cells.append(
      "-" if x.size == 0 else (f"{x[0]:.4f}" if same else mean_sd(x))
    )
  lines.append("| most popular | - | " + " | ".join(cells) + " |")
  if not agree:
    lines.append("")
    lines.append(
      "**The most-popular figures differ across runs** of this dataset "
      "and fraction (they should not: same pairs, same training counts)."
    )
  return lines


def change_table(res: Results, data, fraction) -> list[str]:
  """One row per comparison whose two variants ran; `-` where a side has
  no figure, `n/a` where the baseline's mean is 0."""
  rows = []
  present = set(res.variants(data, fraction))
  for variant, base in COMPARISONS:
    if variant in present and base in present:
      cells = []
      for s, k in COLUMNS:
        ours = res.vals(data, fraction, variant, s, k)
        theirs = res.vals(data, fraction, base, s, k)
        cells.append(
          fmt_change(compare(theirs, ours))
          if ours.size and theirs.size
          else "-"
        )
      rows.append(f"| {variant} vs {base} | " + " | ".join(cells) + " |")
  return [*_table_head("comparison"), *rows] if rows else []


def epoch_table(res: Results, data, fraction) -> list[str]:
  lines = [
    "| variant | best epoch per seed | mean best epoch | epochs run per "
    "seed | validation R@10 at best | training loop (mean) |",
    "|---|---|---|---|---|---|",
  ]
  for v in res.variants(data, fraction):
    runs = sorted(res.runs(data, fraction, v), key=lambda r: r["seed"])
    best = [r["best_epoch"] for r in runs]
    known = [b for b in best if b is not None]
    val = np.array(
      [
        r["best_validation_recall@10"]
        for r in runs
        if r["best_validation_recall@10"] is not None
      ]
    )
    lines.append(
      f"| {v} | {', '.join(str(b) for b in best)} | "
      f"{np.mean(known) if known else float('nan'):.1f} | "
      f"{', '.join(str(r['epochs_run']) for r in runs)} | {mean_sd(val)} | "
      f"{np.mean([r['train_seconds'] for r in runs]):.0f} s |"
    )
  return lines


def variant_table(args, runs: list[dict[str, Any]]) -> list[str]:
  """Each variant's effective values of the keys variants change."""
  lines = [
    "| variant | " + " | ".join(f"`{k}`" for k in VARIANT_KEYS) + " |",
    "|" + "---|" * (len(VARIANT_KEYS) + 1),
  ]
  for v in args.variants:
    run = next(r for r in runs if r["variant"] == v)
    config = config_of(run)
    cells = []
    for key in VARIANT_KEYS:
      value = config_value(config, key)
      if key in ITEM_SSL_KEYS and not config.ssl.alpha:
        value = "-"  # no item SSL task: irrelevant
      cells.append(str(value))
    lines.append(f"| {v} ({LABELS[v]}) | " + " | ".join(cells) + " |")
  return lines


# ---------------------------------------------------------------- targets


# The fraction the sparse-data targets (a) and (d) read.
SPARSE_FRACTION = 0.1


def _verdict(oks: list[bool | None]) -> str:
  """`met` if every check passed, `not met` if one failed, else `not
  measured` (a check lacks its runs, or its noise is unknown)."""
  if any(ok is False for ok in oks):
    return "**not met**"
  if oks and all(oks):
    return "**met**"
  return "**not measured**"


def _lift_check(c: dict[str, Any] | None, at_least: float) -> bool | None:
  """A change of at least `at_least` % beyond seed noise: True / False,
  None when it cannot be told (no runs, or `?` on a big enough change)."""
  if c is None:
    return None
  if c["change"] < at_least or c["mark"] == "~":
    return False
  return True if c["mark"] == "*" else None


def _mean(x: np.ndarray) -> str:
  return f"{x.mean():.4f}" if x.size else "-"


def _datasets(res: Results, args, fraction, variant) -> list[str]:
  return [d for d in args.data if res.runs(d, fraction, variant)]


def _target_beats_popular(res: Results, args) -> list[str]:
  """(a) At fraction 0.1, `default` R@10 >= 1.25 x most popular's, on
  every dataset (means over seeds)."""
  head = (
    f"(a) At train_fraction {SPARSE_FRACTION:g}, `default` Recall@10 >= "
    "most popular's + 25% on every dataset"
  )
  datasets = _datasets(res, args, SPARSE_FRACTION, "default")
  if not datasets:
    return [f"{head}: **not measured** (no `default` run at that fraction)."]
  oks, items = [], []
  for d in datasets:
    ours = res.vals(d, SPARSE_FRACTION, "default", "overall", 10)
    popular, _ = res.baseline(d, SPARSE_FRACTION, "overall", 10)
    ok = None
    if ours.size and popular.size:
      # > as well as >= 1.25x, so that 0 vs 0 is not a win.
      m, p = ours.mean(), popular.mean()
      ok = bool(m >= 1.25 * p and m > p)
    oks.append(ok)
    items.append(
      f"{d}: {_mean(ours)} vs most popular {_mean(popular)} "
      f"({fmt_change(compare(popular, ours))})"
    )
  return [f"{head}: {_verdict(oks)} (" + "; ".join(items) + ")."]


def _target_history(res: Results, args) -> list[str]:
  """(b) Full data: `hist` vs `idonly` >= +10% R@10 beyond noise on
  synthetic and ml1m."""
  oks, items = [], []
  for d in ("synthetic", "ml1m"):
    c = res.change(d, 1.0, "hist", "idonly", "overall", 10)
    oks.append(_lift_check(c, 10.0))
    ran = res.runs(d, 1.0, "hist") and res.runs(d, 1.0, "idonly")
    items.append(f"{d}: {fmt_change(c) if ran else 'not run'}")
  return [
    "(b) Full data, `hist` vs `idonly` Recall@10 >= +10% beyond noise on "
    f"synthetic and ml1m: {_verdict(oks)} (" + "; ".join(items) + ")."
  ]


def _target_heldout(res: Results, args) -> list[str]:
  """(c) Held-out users: `default` R@10 >= 1.5 x most popular's on the
  same pairs, and >= 0.8 x its R@10 on the regular test pairs."""
  lines = []
  for fraction in args.fractions:
    datasets = _datasets(res, args, fraction, "default")
    if not datasets:
      continue
    oks, items = [], []
    for d in datasets:
      held = res.vals(d, fraction, "default", HELDOUT, 10)
      popular, _ = res.baseline(d, fraction, HELDOUT, 10)
      test = res.vals(d, fraction, "default", "overall", 10)
      if not held.size or not popular.size:
        oks.append(None)
        items.append(f"{d}: no held-out users evaluated")
        continue
      h, p, t = held.mean(), popular.mean(), test.mean()
      oks.append(bool(h >= 1.5 * p and h > p and h >= 0.8 * t))
      items.append(
        f"{d}: {h:.4f} vs most popular {p:.4f} (x{h / p:.2f})"
        if p
        else f"{d}: {h:.4f} vs most popular 0"
      )
      items[-1] += f", vs test {t:.4f} (x{h / t:.2f})" if t else ", test 0"
    lines.append(
      f"(c) train_fraction {fraction:g}, held-out users' `default` "
      "Recall@10 >= 1.5x most popular's on the same pairs and >= 0.8x "
      f"`default`'s on the test pairs, on every dataset: {_verdict(oks)} ("
      + "; ".join(items)
      + ")."
    )
  return lines or ["(c) Held-out users: **not measured** (no `default` run)."]


def _best_ssl(res: Results, data, fraction) -> str | None:
  """The SSL variant of highest mean test R@10 (a choice made on test:
  the lift of the best of three is an optimistic figure)."""
  means = {
    v: x.mean()
    for v in SSL_VARIANTS
    if (x := res.vals(data, fraction, v, "overall", 10)).size
  }
  return max(means, key=means.get) if means else None


def _at_least_two(oks: list[bool | None]) -> str:
  """`met` with two passes, `not measured` if the unknowns could make
  two, else `not met`."""
  hits = sum(ok is True for ok in oks)
  if hits >= 2:
    return "**met**"
  if hits + sum(ok is None for ok in oks) >= 2:
    return "**not measured**"
  return "**not met**"


def _target_ssl(res: Results, args) -> list[str]:
  """(d) At fraction 0.1, the best SSL variant vs `hist`: R@10 >= +10%
  beyond noise on two datasets, and tail R@100 lift above head R@100
  lift (head R@10 without a head R@100), the tail lift beyond noise, on
  two datasets."""
  f = SPARSE_FRACTION
  datasets = [d for d in args.data if res.runs(d, f, "hist")]
  lift_oks, lift_items, tail_oks, tail_items = [], [], [], []
  for d in datasets:
    best = _best_ssl(res, d, f)
    if best is None:
      continue
    c = res.change(d, f, best, "hist", "overall", 10)
    lift_oks.append(_lift_check(c, 10.0))
    lift_items.append(f"{d}: `{best}` {fmt_change(c)}")
    tail = res.change(d, f, best, "hist", "tail", 100)
    k = 100 if res.vals(d, f, best, "head", 100).size else 10
    head = res.change(d, f, best, "hist", "head", k)
    ok = None
    if tail is not None and head is not None:
      ok = _lift_check(tail, 0.0) if tail["change"] > head["change"] else False
    tail_oks.append(ok)
    tail_items.append(
      f"{d}: `{best}` tail R@100 {fmt_change(tail)} vs head R@{k} "
      f"{fmt_change(head)}"
    )
  if not lift_items:
    return [
      f"(d) SSL at train_fraction {f:g}: **not measured** (no `hist` run "
      "with an SSL variant beside it)."
    ]
  return [
    f"(d1) train_fraction {f:g}, the best of {', '.join(SSL_VARIANTS)} vs "
    "`hist` (best by test Recall@10 mean), Recall@10 >= +10% beyond noise "
    f"on at least two datasets: {_at_least_two(lift_oks)} ("
    + "; ".join(lift_items)
    + ").",
    f"(d2) train_fraction {f:g}, the same variant's tail Recall@100 lift "
    "above its head lift, the tail lift positive beyond noise, on at least "
    f"two datasets: {_at_least_two(tail_oks)} (" + "; ".join(tail_items) + ").",
  ]


def targets(res: Results, args) -> list[str]:
  """The study's targets, computed from the tables' numbers (means over
  seeds); each `met`, `not met` or `not measured`."""
  lines = [
    *_target_beats_popular(res, args),
    *_target_history(res, args),
    *_target_heldout(res, args),
    *_target_ssl(res, args),
  ]
  twins = sorted(
    {
      default_twin(res.runs(d, f)) or ""
      for d, f in res.settings()
      if not any(r["variant"] == "default" for r in res.runs(d, f))
    }
    - {""}
  )
  note = (
    [
      f"`default` stands for the runs of {', '.join(twins)}: their model "
      "and SSL settings are `Config()`'s.",
      "",
    ]
    if twins
    else []
  )
  return [
    "## Targets",
    "",
    *note,
    *(part for line in lines for part in (line, "")),
    "`*`: beyond seed noise (every seed of one variant beats every seed of "
    "the other); `~`: within it; `?`: fewer than two seeds, noise unknown "
    "(a lift big enough for its target is then not measured, one too "
    "small is not met).",
  ]


# ---------------------------------------------------------------- report


def _preamble(args, argv, results, seconds, runs_planned) -> list[str]:
  """The command, machine, timing, shared settings and variant table."""
  first = config_of(runs_planned[0])
  shared = ", ".join(
    f"`{k}={config_value(first, k)}`" for k in SHARED_KEYS if k != "data.split"
  )
  return [
    "# Query tower and SSL ablation",
    "",
    "Command: `"
    + shlex.join([".venv/bin/python", "bench/ablation.py", *argv])
    + "`",
    "",
    f"Machine: {platform.platform()}, {os.cpu_count()} cores (shared), "
    f"Python {platform.python_version()}. Wall time of this invocation "
    f"{seconds / 60:.1f} min; training loops of the reported runs "
    f"{sum(r['train_seconds'] for r in results) / 60:.1f} min "
    f"({sum(r['retrained'] for r in results)} of {len(results)} runs "
    "trained by this invocation).",
    "",
    f"Shared settings (`Config()` defaults unless overridden): {shared}; "
    f"max epochs {args.epochs} at fraction 1 (per dataset: "
    f"{args.epochs_by_data or 'the same'}) and {args.sparse_epochs} below; "
    f"`--set`: {', '.join(f'`{s}`' for s in args.set) or 'none'} (a "
    "variant's own settings win over `--set`).",
    "",
    "Each run keeps the model of its best validation epoch (validation "
    "Recall@10, `train.early_stopping_patience` epochs without improvement "
    "stop it); that model is evaluated on the **test** split with "
    "full-corpus exact search, excluding each query's training and "
    "validation positives. Cells are mean ± sample sd (ddof=1) over seeds.",
    "",
    "Variants:",
    "",
    *variant_table(args, runs_planned),
    "",
  ]


def _fraction_section(res: Results, args, data, fraction) -> list[str]:
  """One dataset and fraction: sizes, recalls, changes, best epochs."""
  runs = res.runs(data, fraction)
  if not runs:
    return []
  seeds = sorted({r["seed"] for r in runs})
  lines = [
    f"### {data}, train_fraction = {fraction:g}",
    "",
    f"Max epochs {epochs_for(args, fraction, data)}, patience "
    f"{args.patience}; "
    f"seeds {seeds}; training steps per run "
    f"{min(r['steps'] for r in runs)} to {max(r['steps'] for r in runs)}.",
    "",
    f"Test split: {split_sizes(runs)}.",
    "",
    "Test Recall (R) overall and by slice:",
    "",
    *metric_table(res, data, fraction),
    "",
  ]
  changes = change_table(res, data, fraction)
  if changes:
    lines += [
      "Relative change of the means (`*`: beyond seed noise, every "
      "seed of one variant beats every seed of the other; `~`: within "
      "seed noise, the seeds overlap; `?`: fewer than two seeds):",
      "",
      *changes,
      "",
    ]
  return [
    *lines,
    "Best validation epochs (the model evaluated above):",
    "",
    *epoch_table(res, data, fraction),
    "",
  ]


def _data_section(res: Results, args, data, config: Config) -> list[str]:
  source = config.data.source + (
    f" from `{config.data.data_dir}`" if config.data.data_dir else ""
  )
  lines = [
    f"## {data}",
    "",
    f"Data: {source}, `data.split={config.data.split}`.",
    "",
  ]
  for fraction in args.fractions:
    lines += _fraction_section(res, args, data, fraction)
  return lines


def _per_run(results: list[dict[str, Any]]) -> list[str]:
  """One line per run: test recalls, best epoch, validation curve."""
  lines = [
    "",
    "## Per run",
    "",
    "Test R@10, R@100, tail R@10, cold R@100, sparse users R@10, held-out "
    "users R@10 (`-`: not evaluated); best epoch; validation Recall@10 per "
    "epoch:",
    "",
  ]
  for r in results:
    m = r["metrics"]
    curve = " ".join(f"{h['recall@10']:.3f}" for h in r["validation"])
    figures = ", ".join(
      fmt(v)
      for v in (
        recall(m, "overall", 10),
        recall(m, "overall", 100),
        recall(m, "tail", 10),
        recall(m, "cold", 100),
        recall(m, "sparse", 10),
        recall(m, HELDOUT, 10),
      )
    )
    lines.append(
      f"- {r['data']} {run_name(r['variant'], r['fraction'], r['seed'])}: "
      f"{figures}; best epoch {r['best_epoch']}; validation {curve}"
    )
  return lines


def report(args, argv, results, seconds, runs_planned) -> str:
  """The markdown report of `results`.

  Args:
    args: the parsed command line (ablation.parse_args): which datasets,
      fractions and variants to report, and the settings to state.
    argv: the command line, quoted in the report.
    results: the run records to report.
    seconds: the wall time to state.
    runs_planned: run records whose configs the report states (the planned
      runs, or `results` themselves when reporting earlier invocations).

  Returns:
    The report, newline-terminated.
  """
  res = Results(results)
  configs = {r["data"]: config_of(r) for r in runs_planned}
  lines = _preamble(args, argv, results, seconds, runs_planned)
  for data in args.data:
    lines += _data_section(res, args, data, configs[data])
  return "\n".join(lines + targets(res, args) + _per_run(results)) + "\n"


# ---------------------------------------------------------------- plot


def _panel_bars(ax, res: Results, data, fraction, colours, handles) -> None:
  """One bar per variant (mean, sd error bars), then most popular."""
  variants = res.variants(data, fraction)
  base = []
  for s, k in PLOT_BARS:
    vals, _ = res.baseline(data, fraction, s, k)
    base.append(vals.mean() if vals.size else np.nan)
  has_base = not np.all(np.isnan(base))
  bars = len(variants) + int(has_base)
  width = 0.85 / bars
  x = np.arange(len(PLOT_BARS))

  def offset(j):
    return (j - (bars - 1) / 2) * width

  for i, v in enumerate(variants):
    means, sds = [], []
    for s, k in PLOT_BARS:
      vals = res.vals(data, fraction, v, s, k)
      means.append(vals.mean() if vals.size else np.nan)
      sds.append(vals.std(ddof=1) if vals.size > 1 else 0.0)
    handles[v] = ax.bar(
      x + offset(i),
      means,
      width,
      yerr=sds,
      capsize=2,
      color=colours(VARIANTS.index(v)),
      label=v,
    )
  if has_base:
    handles["most popular"] = ax.bar(
      x + offset(len(variants)),
      base,
      width,
      color="0.8",
      edgecolor="0.3",
      hatch="//",
      label="most popular",
    )
    # A mark on top, so a zero bar is seen as zero, not as missing.
    ax.plot(
      x + offset(len(variants)),
      base,
      linestyle="none",
      marker="_",
      markersize=8,
      color="0.2",
    )


def _panel_labels(ax, res: Results, data, fraction) -> None:
  """Title (seeds), ticks (slice, K, test pairs) and axis of a panel."""
  runs = res.runs(data, fraction)
  ticks = []
  for s, k in PLOT_BARS:
    # The first run that has the slice (older or id-only runs may not).
    entry = next((e for r in runs if (e := slice_entry(r["metrics"], s))), None)
    pairs = f"\n{entry['num_pairs']:,} pairs" if entry else ""
    ticks.append(f"{column_title(s, k)}{pairs}")
  seeds = len({r["seed"] for r in res.runs(data, fraction)})
  ax.set_title(f"{data}, train_fraction {fraction:g} ({seeds} seeds)")
  ax.set_xticks(np.arange(len(PLOT_BARS)))
  ax.set_xticklabels(ticks)
  ax.set_ylim(bottom=0)
  ax.set_ylabel("test recall")
  ax.grid(axis="y", alpha=0.3)


def plot(results: list[dict[str, Any]], path: str) -> None:
  """Grouped bars of test recall by slice, one panel per data x fraction.

  Bars: one per variant (mean over seeds, sd error bars) and a hatched
  grey most-popular bar, for overall / head / tail Recall@10, cold
  Recall@100, and the sparse and held-out users' Recall@10 (no bar where
  a run has no such figure). Written atomically (temporary file, then a rename).
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  res = Results(results)
  settings = res.settings()
  if not settings:
    return
  data_names = list(dict.fromkeys(d for d, _ in settings))
  fractions = list(dict.fromkeys(f for _, f in settings))
  fig, axes = plt.subplots(
    len(data_names),
    len(fractions),
    figsize=(9 * len(fractions), 3.8 * len(data_names)),
    squeeze=False,
  )
  colours = plt.get_cmap("tab10")
  handles = {}
  for row, data in enumerate(data_names):
    for col, fraction in enumerate(fractions):
      ax = axes[row][col]
      if not res.variants(data, fraction):
        ax.set_axis_off()
        continue
      _panel_bars(ax, res, data, fraction, colours, handles)
      _panel_labels(ax, res, data, fraction)
  fig.legend(
    list(handles.values()),
    list(handles),
    loc="lower center",
    ncol=min(len(handles), 7),
    frameon=False,
  )
  fig.suptitle(
    "Test recall by slice at each run's best validation epoch "
    "(mean ± sd over seeds)"
  )
  fig.tight_layout(rect=(0, 0.06, 1, 0.96))
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=110)
  plt.close(fig)
  atomic.write_bytes(path, buffer.getvalue())
