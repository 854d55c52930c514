r"""Full-corpus evaluation of a run: Recall@K and MAP@K, overall and by slice.

Each query's known positives of the earlier splits are excluded from its
ranking (training items on validation, training and validation items on
test); each (query, item) pair is scored once; item-to-item drops the test
pairs that equal an earlier pair. A most-popular recommender is scored on
the same pairs with the same exclusions and printed beside the model.

Writes WORKDIR/eval/metrics.json (the baseline under
`baseline.most_popular`, the selection rules and their counts under
`protocol`, the checkpoint and epoch scored under `evaluated`) and
recall_by_decile.png (overlaying the runs given with --compare, and the
baseline).

Example:
  python -m pipelines.evaluate --workdir=runs/cfm --compare=runs/baseline
"""

from absl import app, flags

from pipelines import common
from tfr_ssl import run_report, workflow

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run.")
_USE_INDEX = flags.DEFINE_bool(
  "use_index", False, "Retrieve through WORKDIR/index instead of exactly."
)
_COMPARE = flags.DEFINE_list(
  "compare", [], "Other workdirs (already evaluated) to overlay in the plot."
)
_SPLIT = flags.DEFINE_enum(
  "split", None, ["validation", "test"], "Split (default: the run's)."
)
_MAX_PAIRS = flags.DEFINE_integer(
  "max_pairs",
  0,
  "Score a seeded uniform sample of whole queries holding about this many "
  "held-out pairs, each query with all its pairs (0 = all); every item "
  "stays a candidate.",
  lower_bound=0,
)
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  metrics = common.run_or_fail(
    workflow.evaluate_run,
    _WORKDIR.value,
    use_index=_USE_INDEX.value,
    compare=_COMPARE.value,
    split=_SPLIT.value,
    max_pairs=_MAX_PAIRS.value,
  )
  print(run_report.format_metrics(metrics))
  print(f"Written to {_WORKDIR.value}/eval/")


if __name__ == "__main__":
  common.run(main)
