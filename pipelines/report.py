r"""Summarises a run: where its artifacts are and what it measured.

With eval/metrics.json it also names the model evaluated (the checkpoint,
its epoch and step), the pairs scored and what each slice counts.

Example:
  python -m pipelines.report --workdir=runs/cfm
"""

from absl import app, flags

from pipelines import common
from tfr_ssl import run_report

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run.")
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  print(common.run_or_fail(run_report.report, _WORKDIR.value))


if __name__ == "__main__":
  common.run(main)
