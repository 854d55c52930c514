r"""Retrieves the top items for queries given as raw features.

Queries come from --query (one JSON object), from --user (that user's
features as the data holds them), or, without either, as JSON lines on
standard input (UTF-8). Values are strings; multi-valued features are
`|`-joined strings. --show_history (implied by --user) prints the items the
query's user interacted with in training beside the results.

Example:
  python -m pipelines.retrieve --workdir=runs/cfm --query='{"user_id": "42"}'
  echo '{"user_id": "7"}' | python -m pipelines.retrieve --workdir=runs/cfm
  python -m pipelines.retrieve --workdir=runs/cfm --user=7 --top_k=5
"""

import json
import sys

from absl import app, flags

from pipelines import common
from tfr_ssl import workflow

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run.")
_QUERY = flags.DEFINE_string("query", None, "One query as a JSON object.")
_USER = flags.DEFINE_string(
  "user",
  None,
  "Retrieve for this user of the run's data (its query features as the "
  "data holds them); shows its training history.",
)
_K = flags.DEFINE_integer(
  "top_k", 10, "Items to print per query.", lower_bound=1
)
_EXCLUDE = flags.DEFINE_list("exclude", [], "Item ids never to return.")
_JSON = flags.DEFINE_bool("json", False, "Print JSON lines instead of text.")
_HISTORY = flags.DEFINE_bool(
  "show_history",
  False,
  "Also print the items each query's user interacted with in training.",
)
flags.mark_flag_as_required("workdir")
# Longest input quoted back in an error.
_QUOTE = 80


def _parse(text: str, where: str) -> dict:
  try:
    query = json.loads(text)
  except json.JSONDecodeError as e:
    raise app.UsageError(f"{where}: not JSON ({e})") from None
  if not isinstance(query, dict):
    shown = text.strip()
    if len(shown) > _QUOTE:
      shown = shown[: _QUOTE - 3] + "..."
    raise app.UsageError(f"{where}: a query must be a JSON object, got {shown}")
  return query


def _stdin_queries() -> list[dict]:
  queries = []
  for number, raw in enumerate(sys.stdin.buffer, 1):
    try:
      line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise app.UsageError(
        f"stdin line {number}: bytes {raw[e.start : e.end]!r} at character "
        f"{e.start + 1} are not UTF-8 text"
      ) from None
    if line.strip():
      queries.append(_parse(line, f"stdin line {number}"))
  if not queries:
    raise app.UsageError(
      "no queries: give --query='{...}', --user=ID, or JSON lines on stdin"
    )
  return queries


def _queries() -> list[dict]:
  if _QUERY.value is not None and _USER.value is not None:
    raise app.UsageError("give --query or --user, not both")
  if _USER.value is not None:
    return [workflow.user_query(_WORKDIR.value, _USER.value)]
  if _QUERY.value is not None:
    return [_parse(_QUERY.value, "--query")]
  return _stdin_queries()


def _print(query: dict, hits: list[dict], history: list[dict] | None) -> None:
  if _JSON.value:
    record = {"query": query, "items": hits}
    if history is not None:
      record["history"] = history
    print(json.dumps(record))
    return
  print(f"query {json.dumps(query)}")
  if history is not None:
    print(f"  history ({len(history)} most recent training items):")
    for hit in history:
      print(f"       {hit['id']:>12}  {_features(hit)}")
    print("  retrieved:")
  for rank, hit in enumerate(hits, 1):
    print(
      f"  {rank:3d}. {hit['id']:>12}  {hit['score']:+.4f}  {_features(hit)}"
    )


def _features(hit: dict) -> str:
  return "  ".join(f"{k}={v}" for k, v in hit["features"].items())


def _run() -> None:
  queries = _queries()
  results = workflow.retrieve(
    _WORKDIR.value,
    queries,
    exclude=[_EXCLUDE.value] * len(queries),
    k=_K.value,
  )
  histories = [None] * len(queries)
  if _HISTORY.value or _USER.value is not None:
    histories = workflow.query_history(_WORKDIR.value, queries)
  for query, hits, history in zip(queries, results, histories, strict=True):
    _print(query, hits, history)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  common.run_or_fail(_run)


if __name__ == "__main__":
  common.run(main)
