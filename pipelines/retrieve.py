r"""Retrieves the top items for queries given as raw features.

Queries come from --query (one JSON object), from --user (that user's
features as the data holds them), or, without either, as JSON lines on
standard input (UTF-8). Values are strings; multi-valued features are
`|`-joined strings. --show_history (implied by --user) prints the items the
query's user interacted with in training beside the results, and leaves
them out of the results (as the service's page does; --noexclude_history
keeps them). --top_k goes from 1 to the index's k (pipelines.build_index
--k), the bound the service's `top_k` has too.

--history=i1,i2,... (item ids, oldest first) gives the query's user a
history, for a run whose query tower reads one: alone it is the whole
query (a user the data does not hold, answered without retraining); with
--user or --query it replaces the history the run knew for that user. Its
items are printed and, unless --noexclude_history, left out of the results.

Example:
  python -m pipelines.retrieve --workdir=runs/cfm --query='{"user_id": "42"}'
  echo '{"user_id": "7"}' | python -m pipelines.retrieve --workdir=runs/cfm
  python -m pipelines.retrieve --workdir=runs/cfm --user=7 --top_k=5
  python -m pipelines.retrieve --workdir=runs/cfm --history=1193,661,914
"""

import json
import sys

from absl import app, flags

from pipelines import common
from tfr_ssl import workflow

# Longest input quoted back in an error, and longest value echoed back.
_QUOTE = 80
_ECHO = 200
_LINE_HINT = 'give one JSON object per line, e.g. {"user_id": "42"}'
_FLAG_HINT = """give one JSON object, e.g. --query='{"user_id": "42"}'"""

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run.")
_QUERY = flags.DEFINE_string("query", None, "One query as a JSON object.")
_USER = flags.DEFINE_string(
  "user",
  None,
  "Retrieve for this user of the run's data (its query features as the "
  "data holds them); shows its training history.",
)
_K = flags.DEFINE_integer(
  "top_k",
  10,
  "Items to print per query, from 1 to the index's k.",
  lower_bound=1,
)
_EXCLUDE = flags.DEFINE_list("exclude", [], "Item ids never to return.")
_TYPED_HISTORY = flags.DEFINE_list(
  "history",
  None,
  "The user's item ids, oldest first (comma-separated): alone, the query "
  "of a user the data need not hold; with --user or --query, that query's "
  "history.",
)
_JSON = flags.DEFINE_bool(
  "json",
  False,
  "Print JSON lines instead of text (the query is echoed with values of "
  f"more than {_ECHO} characters shortened).",
)
_HISTORY = flags.DEFINE_bool(
  "show_history",
  False,
  "Also print the items each query's user interacted with in training.",
)
_EXCLUDE_HISTORY = flags.DEFINE_bool(
  "exclude_history",
  True,
  "With --user or --show_history: leave the user's training items out of "
  "the results; with --history, the items given.",
)
flags.mark_flag_as_required("workdir")


def _quote(text: str, limit: int = _QUOTE) -> str:
  text = text.strip()
  return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse(text: str, where: str, hint: str = _LINE_HINT) -> dict:
  """One query; a QueryError naming `where` (and a hint) if it is not one."""
  try:
    query = json.loads(text)
  except json.JSONDecodeError as e:
    raise workflow.QueryError(
      f"{where}: not JSON ({e.msg} at character {e.pos + 1}); {hint}"
    ) from None
  except RecursionError:
    raise workflow.QueryError(
      f"{where}: JSON nested too deeply; {hint}"
    ) from None
  if not isinstance(query, dict):
    raise workflow.QueryError(
      f"{where}: a query must be a JSON object, got {_quote(text)}; {hint}"
    )
  for name, value in query.items():
    problem = workflow.text_problem(value) if isinstance(value, str) else None
    if problem:
      raise workflow.QueryError(f"{where}: feature {name!r} {problem}.")
  return query


def _stdin_queries() -> list[dict]:
  queries = []
  for number, raw in enumerate(sys.stdin.buffer, 1):
    try:
      line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise workflow.QueryError(
        f"stdin line {number}: bytes {raw[e.start : e.end]!r} at byte "
        f"{e.start + 1} are not UTF-8 text; write the queries in UTF-8"
      ) from None
    if line.strip():
      queries.append(_parse(line, f"stdin line {number}"))
  if not queries:
    raise workflow.QueryError(
      "no queries: stdin is empty; give JSON lines on stdin (e.g. echo "
      """'{"user_id": "42"}' | python -m pipelines.retrieve ...), """
      "--query='{...}' or --user=ID"
    )
  return queries


def _queries() -> list[dict]:
  if _QUERY.value is not None and _USER.value is not None:
    raise workflow.QueryError("give --query or --user, not both")
  if _USER.value is not None:
    queries = [workflow.user_query(_WORKDIR.value, _USER.value)]
  elif _QUERY.value is not None:
    queries = [_parse(_QUERY.value, "--query", _FLAG_HINT)]
  elif _TYPED_HISTORY.value is not None:
    queries = [{}]
  else:
    return _stdin_queries()
  if _TYPED_HISTORY.value is not None:
    if "history" in queries[0]:
      raise workflow.QueryError(
        "--history: --query has a history too; give it in one place"
      )
    queries[0]["history"] = [i.strip() for i in _TYPED_HISTORY.value]
  return queries


def _echo(query: dict) -> dict:
  """The query as printed back: long values shortened (input can be huge)."""
  return {
    name: value
    if not isinstance(value, str) or len(value) <= _ECHO
    else f"{value[: _ECHO - 3]}... ({len(value)} characters)"
    for name, value in query.items()
  }


def _print(
  query: dict, hits: list[dict], history: workflow.History | None
) -> None:
  if _JSON.value:
    record = {"query": _echo(query), "items": hits}
    if history is not None:
      record["history"] = history.items
    print(json.dumps(record))
    return
  print(f"query {json.dumps(_echo(query))}")
  if _TYPED_HISTORY.value is not None:
    left_out = "; left out of the results" if _EXCLUDE_HISTORY.value else ""
    typed = [i.strip() for i in _TYPED_HISTORY.value]
    print(f"  given history ({len(typed)} items, oldest first{left_out}):")
    for item_id in typed:
      print(f"       {item_id:>12}")
  elif history is not None:
    shown = len(history.items)
    which = (
      f"{shown} most recent"
      if history.by_time
      else f"last {shown} in file order (the data has no timestamps)"
    )
    left_out = "; left out of the results" if _EXCLUDE_HISTORY.value else ""
    print(f"  history ({which}, of {history.total} training items{left_out}):")
    for hit in history.items:
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
  histories = [None] * len(queries)
  exclude = [list(_EXCLUDE.value) for _ in queries]
  if _TYPED_HISTORY.value is not None:
    # The history given is the user's own items.
    if _EXCLUDE_HISTORY.value:
      exclude[0].extend(queries[0]["history"])
  elif _HISTORY.value or _USER.value is not None:
    histories = workflow.query_history(_WORKDIR.value, queries)
    if _EXCLUDE_HISTORY.value:
      for ids, history in zip(exclude, histories, strict=True):
        ids.extend(history.item_ids)
  results = workflow.retrieve(
    _WORKDIR.value, queries, exclude=exclude, k=_K.value
  )
  for query, hits, history in zip(queries, results, histories, strict=True):
    _print(query, hits, history)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  common.run_or_fail(_run)


if __name__ == "__main__":
  common.run(main)
