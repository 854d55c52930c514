"""The report of the SSL ablation (`bench/ablation.py`): tables, targets, plot.

Everything here reads run records, the entries of the `results` list that
ablation.py writes to `--json` (and reads back with `--from_json`): a run's
data, variant, fraction, seed, config overrides, training summary and test
metrics. It renders the markdown report (split sizes, recall tables, the
relative changes with their seed-noise marks, best epochs, the study's
targets, one line per run) and the PNG of the slice recalls. What the
report's sections mean is described in ablation.py's docstring.

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
VARIANTS = ("plain", "logq", "rfm", "cfm", "cfm_proj", "iddrop")
LABELS = {
  "plain": "in-batch softmax, no correction",
  "logq": "+ streaming logQ",
  "rfm": "+ logQ + SSL (RFM)",
  "cfm": "+ logQ + SSL (CFM)",
  "cfm_proj": "+ logQ + SSL (CFM) + projection head",
  "iddrop": "+ logQ + id dropout (no SSL)",
}
# (variant, baseline) rows of the relative-change table.
COMPARISONS = (
  ("logq", "plain"),
  ("rfm", "logq"),
  ("cfm", "logq"),
  ("cfm_proj", "logq"),
  ("iddrop", "logq"),
  # The SSL task alone: rfm and cfm carry id dropout, logq does not.
  ("rfm", "iddrop"),
  ("cfm", "iddrop"),
)
# (slice, K) columns of the tables; "overall" is the whole test split.
COLUMNS = tuple(
  (s, k) for s in ("overall", "head", "tail", "cold") for k in (10, 100)
)
# The bars of the plot: (slice, K); cold items are rarely in a top 10.
PLOT_BARS = (("overall", 10), ("head", 10), ("tail", 10), ("cold", 100))
# The keys a variant may change, shown per variant in the report.
VARIANT_KEYS = (
  "model.logq",
  "ssl.alpha",
  "ssl.masking",
  "ssl.projection_dim",
  "model.id_dropout",
)
# Settings every variant shares, shown in the report as they resolve.
SHARED_KEYS = (
  "model.temperature",
  "model.embedding_dim",
  "model.output_dim",
  "ssl.key_mode",
  "ssl.temperature",
  "ssl.batch_size",
  "train.optimizer",
  "train.learning_rate",
  "train.batch_size",
  "train.early_stopping_patience",
  "train.validation_examples",
  "data.split",
)
# Keys the script sets per run: --set must not change them.


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
    raise SystemExit(f"{os.path.basename(run['workdir'])}: {e}") from None


def config_value(config: Config, key: str) -> Any:
  return functools.reduce(getattr, key.split("."), config)


# ---------------------------------------------------------------- numbers


def recall(metrics: dict[str, Any] | None, slice_name: str, k: int):
  """Recall@k of the whole split or of a slice; None when absent."""
  if not metrics:
    return None
  if slice_name != "overall":
    metrics = metrics.get("slices", {}).get(slice_name, {})
  value = metrics.get(f"recall@{k}")
  return None if value is None else float(value)


def baseline_of(metrics: dict[str, Any]) -> dict[str, Any] | None:
  return (metrics.get("baseline") or {}).get("most_popular")


def values(runs: list[dict], slice_name: str, k: int, baseline=False):
  out = []
  for r in runs:
    m = baseline_of(r["metrics"]) if baseline else r["metrics"]
    v = recall(m, slice_name, k)
    if v is not None:
      out.append(v)
  return np.array(out, dtype=np.float64)


def fmt(value: float | None) -> str:
  return "n/a" if value is None else f"{value:.4f}"


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
    return [
      r
      for r in self.results
      if r["data"] == data
      and r["fraction"] == fraction
      and (variant is None or r["variant"] == variant)
    ]

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


def split_sizes(runs: list[dict[str, Any]]) -> str:
  def sizes(m):
    parts = [
      f"{m.get('num_pairs', 0):,} pairs, {m.get('num_queries', 0):,} "
      f"queries, {m.get('num_items', 0):,} corpus items"
    ]
    for name in ("head", "tail", "cold"):
      row = m.get("slices", {}).get(name)
      if row:
        parts.append(
          f"{name} {row['num_items']:,} items / {row['num_pairs']:,} pairs"
        )
    return "; ".join(parts)

  distinct = {sizes(r["metrics"]) for r in runs}
  text = sizes(runs[0]["metrics"])
  if len(distinct) > 1:
    text += f" (**differs across runs**: {len(distinct)} versions)"
  return text


def metric_table(res: Results, data, fraction) -> list[str]:
  header = ["variant", "seeds"] + [
    f"{s} R@{k}" if s != "overall" else f"R@{k}" for s, k in COLUMNS
  ]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for v in res.variants(data, fraction):
    runs = res.runs(data, fraction, v)
    cells = [mean_sd(values(runs, s, k)) for s, k in COLUMNS]
    lines.append(f"| {v} | {len(runs)} | " + " | ".join(cells) + " |")
  cells, agree = [], True
  for s, k in COLUMNS:
    x, same = res.baseline(data, fraction, s, k)
    agree &= same
    cells.append(
      "n/a" if x.size == 0 else (f"{x[0]:.4f}" if same else mean_sd(x))
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
  header = ["comparison"] + [
    f"{s} R@{k}" if s != "overall" else f"R@{k}" for s, k in COLUMNS
  ]
  rows = []
  present = set(res.variants(data, fraction))
  for variant, base in COMPARISONS:
    if variant in present and base in present:
      cells = [
        fmt_change(res.change(data, fraction, variant, base, s, k))
        for s, k in COLUMNS
      ]
      rows.append(f"| {variant} vs {base} | " + " | ".join(cells) + " |")
  if not rows:
    return []
  return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *rows]


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
      if key.startswith("ssl.") and key != "ssl.alpha" and not config.ssl.alpha:
        value = "-"  # no SSL task: irrelevant
      cells.append(str(value))
    lines.append(f"| {v} ({LABELS[v]}) | " + " | ".join(cells) + " |")
  return lines


# ---------------------------------------------------------------- targets


def _verdict(ok: bool) -> str:
  return "**met**" if ok else "**missed**"


def _cfm_logq(res: Results, data, fraction, s="overall", k=10):
  return res.change(data, fraction, "cfm", "logq", s, k)


def _target_full_data(res: Results, args) -> list[str]:
  """(1) Full data: cfm not worse than logq beyond noise anywhere, better
  beyond noise somewhere."""
  datasets = [d for d in args.data if res.runs(d, 1.0)]
  if 1.0 not in args.fractions or not datasets:
    return ["1. Full data: not run."]
  changes = {d: _cfm_logq(res, d, 1.0) for d in datasets}
  known = [c for c in changes.values() if c is not None]
  not_worse = len(known) == len(changes) and not any(
    beyond(c, -1) for c in known
  )
  better = any(beyond(c, +1) for c in known)
  return [
    f"1. Full data, `cfm` vs `logq` Recall@10 not worse beyond noise on "
    f"every dataset and better beyond noise on at least one: "
    f"{_verdict(not_worse and better)} ("
    + "; ".join(f"{d}: {fmt_change(c)}" for d, c in changes.items())
    + ")."
  ]


def _target_sparse_data(res: Results, args) -> list[str]:
  """(2) Sparse data: >= +10 % beyond noise on at least two datasets."""
  sparse = [f for f in args.fractions if f < 1.0]
  if not sparse:
    return ["2. Sparse data: not run."]
  lines = []
  for fraction in sparse:
    ds = [d for d in args.data if res.runs(d, fraction)]
    changes = {d: _cfm_logq(res, d, fraction) for d in ds}
    hits = [
      d
      for d, c in changes.items()
      if c is not None and c["mark"] == "*" and c["change"] >= 10.0
    ]
    note = "" if len(ds) >= 2 else f"; only {len(ds)} dataset(s) run"
    lines.append(
      f"2. {fraction:g} of the training data, `cfm` vs `logq` Recall@10 "
      f">= +10% beyond noise on at least two datasets: "
      f"{_verdict(len(hits) >= 2)} ("
      + "; ".join(f"{d}: {fmt_change(c)}" for d, c in changes.items())
      + f"{note})."
    )
  return lines


def _target_tail_lift(res: Results) -> list[str]:
  """(3) Tail lift above head lift."""
  items = []
  for data, fraction in res.settings():
    tail = _cfm_logq(res, data, fraction, "tail")
    head = _cfm_logq(res, data, fraction, "head")
    if tail is None or head is None:
      items.append(f"{data} f={fraction:g}: n/a (missed)")
      continue
    ok = tail["change"] > head["change"]
    items.append(
      f"{data} f={fraction:g}: tail {fmt_change(tail)} vs head "
      f"{fmt_change(head)}, {'met' if ok else 'missed'}"
    )
  return [
    "3. Tail lift above head lift (`cfm` vs `logq`, Recall@10 relative "
    "change): " + ("; ".join(items) if items else "nothing to compare") + "."
  ]


def _target_cold_items(res: Results, args) -> list[str]:
  """(4) Synthetic cold items: cold R@100 >= half of tail R@100."""
  synthetic = [f for f in args.fractions if res.runs("synthetic", f)]
  if not synthetic:
    return ["4. Synthetic: not run."]
  lines = []
  for fraction in synthetic:
    items = []
    cfm_ok = None
    for v in res.variants("synthetic", fraction):
      cold = res.vals("synthetic", fraction, v, "cold", 100)
      tail = res.vals("synthetic", fraction, v, "tail", 100)
      if cold.size == 0 or tail.size == 0:
        items.append(f"{v}: n/a")
        continue
      ok = cold.mean() >= tail.mean() / 2
      if v == "cfm":
        cfm_ok = ok
      items.append(
        f"{v}: cold {cold.mean():.4f} vs tail/2 {tail.mean() / 2:.4f} "
        f"({'met' if ok else 'missed'})"
      )
    lines.append(
      f"4. Synthetic, f={fraction:g}, `cfm` cold Recall@100 >= half its "
      f"tail Recall@100: {_verdict(bool(cfm_ok))} (" + "; ".join(items) + ")."
    )
  return lines


def targets(res: Results, args) -> list[str]:
  """The study's targets, computed from the tables' numbers."""
  return [
    "## Targets",
    "",
    *_target_full_data(res, args),
    *_target_sparse_data(res, args),
    *_target_tail_lift(res),
    *_target_cold_items(res, args),
    "",
    "`*`: beyond seed noise (every seed of one variant beats every seed of "
    "the other); `~`: within it; `?`: fewer than two seeds, noise unknown "
    "(never counted as beyond noise).",
  ]


# ---------------------------------------------------------------- report


def _preamble(args, argv, results, seconds, runs_planned) -> list[str]:
  """The command, machine, timing, shared settings and variant table."""
  first = config_of(runs_planned[0])
  shared = ", ".join(
    f"`{k}={config_value(first, k)}`" for k in SHARED_KEYS if k != "data.split"
  )
  return [
    "# SSL ablation",
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
    "Test R@10, R@100, tail R@10, cold R@100; best epoch; validation "
    "Recall@10 per epoch:",
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
  metrics = res.runs(data, fraction)[0]["metrics"]
  ticks = []
  for s, k in PLOT_BARS:
    entry = metrics if s == "overall" else metrics.get("slices", {}).get(s)
    pairs = f"\n{entry['num_pairs']:,} pairs" if entry else ""
    ticks.append(f"{s} R@{k}{pairs}")
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
  grey most-popular bar, for overall / head / tail Recall@10 and cold
  Recall@100. Written atomically (temporary file, then a rename).
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
    figsize=(6.5 * len(fractions), 3.8 * len(data_names)),
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
