r"""Exports the query and item towers of a run as raw-feature SavedModels.

Writes WORKDIR/export/{query,item}/ and manifest.json; the previous export
stays loadable until the new one is complete.

Example:
  python -m pipelines.export --workdir=runs/cfm
"""

from absl import app, flags

from pipelines import common, tf_chatter
from tfr_ssl import workflow

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run.")
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  tf_chatter.quiet_saving_notes()
  manifest = common.run_or_fail(workflow.export_run, _WORKDIR.value)
  print(
    f"Exported {manifest['task']} towers (dim {manifest['output_dim']}) to "
    f"{_WORKDIR.value}/export"
  )


if __name__ == "__main__":
  common.run(main)
