r"""Builds the retrieval index of a run and audits it against exact search.

Index settings (--k, --exact_below, --num_leaves, --leaves_to_search,
--reorder, --quantization_threshold, --audit_queries, --recall_floor)
default to the run's config and can be changed here without retraining.

Embeds the whole corpus with the exported item tower and chooses the index
by measuring on it (tfr_ssl/index/choice.py): ScaNN's leaves_to_search and
reordering depth are tuned on sample queries, and each candidate and exact
search are timed on other queries. The fastest ScaNN search whose held-out
recall@10 against exact search reaches --recall_floor (default 0.95) wins
if it is clearly faster than exact search; otherwise exact search does.
--num_leaves, --leaves_to_search or --reorder set to a non-zero value is
used as given (and asks for ScaNN); corpora below --exact_below use exact
search without measuring. Prints the choice (every candidate: settings,
recall@10, queries/s), the audit recall and query speed of the winner on a
third set of queries, and saves one retrieval SavedModel (raw query
features -> top-k ids and scores) to WORKDIR/index/, with the choice in
WORKDIR/index/manifest.json and WORKDIR/index/items.jsonl (the features
`retrieve` shows).

--add_items=PATH/items.csv (the daily incremental update) also indexes the
items of that CSV, embedded by the same exported item tower: no retraining,
no model rebuild. The file is formatted like the CSV source's items.csv
(data/README.md) and its columns must be exactly the run's item features (an
extra or missing column, an empty id and an id repeated in the file are
errors naming the file, line and column). A new id is unknown to the model
and is embedded from its content features; an id already in the corpus
replaces that item's features. The index manifest's `added_items` records the
file (path, sha256) and how many items were added and replaced; `num_items`
includes the added ones. Each run builds the index from the corpus plus the
given file only: pass every file still to be served (or merge them first).

Example:
  python -m pipelines.build_index --workdir=runs/cfm
  python -m pipelines.build_index --workdir=runs/cfm --recall_floor=0.99
  python -m pipelines.build_index --workdir=runs/cfm --reorder=1000
  python -m pipelines.build_index --workdir=runs/cfm \
      --add_items=feeds/2024-05-01/items.csv
"""

from absl import app, flags

from pipelines import common, tf_chatter
from tfr_ssl import run_report, workflow
from tfr_ssl.index import choice

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run.")
flags.mark_flag_as_required("workdir")
_ADD_ITEMS = flags.DEFINE_string(
  "add_items",
  None,
  "CSV of new items (the run's item feature columns, items.csv format) to "
  "embed with the exported item tower and index with the corpus; an id "
  "already in the corpus replaces that item.",
)
common.define_config_flags()
common.grouped_help("index")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  tf_chatter.quiet_saving_notes()
  overrides = common.section_overrides("index")
  manifest = common.run_or_fail(
    workflow.build_index_run,
    _WORKDIR.value,
    overrides,
    add_items=_ADD_ITEMS.value,
  )
  if "choice" in manifest["index"]:
    print(choice.describe(manifest["index"]["choice"]))
  print(run_report.describe_index(manifest))
  added = manifest.get("added_items")
  if added:
    print(
      f"Added {added['count']} item(s) and replaced {added['replaced']} from "
      f"{added['source']} (sha256 {added['sha256'][:12]})"
    )
  print(f"Saved to {_WORKDIR.value}/index")


if __name__ == "__main__":
  common.run(main)
