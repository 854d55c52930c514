r"""Builds the retrieval index of a run and audits it against exact search.

Index settings (--k, --exact_below, --num_leaves, --leaves_to_search,
--reorder, --quantization_threshold, --audit_queries) default to the run's
config and can be changed here without retraining.

Embeds the whole corpus with the exported item tower, builds ScaNN (exact
search for small corpora), prints the audit recall and query speed, and saves
one retrieval SavedModel (raw query features -> top-k ids and scores) to
WORKDIR/index/.

Example:
  python -m pipelines.build_index --workdir=runs/cfm
  python -m pipelines.build_index --workdir=runs/cfm --exact_below=0 \
      --reorder=1000
"""

from absl import app, flags

from pipelines import common
from tfr_ssl import workflow

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run.")
flags.mark_flag_as_required("workdir")
common.define_config_flags()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  overrides = common.section_overrides("index")
  manifest = common.run_or_fail(
    workflow.build_index_run, _WORKDIR.value, overrides
  )
  print(workflow.describe_index(manifest))
  print(f"Saved to {_WORKDIR.value}/index")


if __name__ == "__main__":
  app.run(main)
