r"""Retrieves the top items for queries given as raw features.

Queries come from --query (one JSON object) or, without it, as JSON lines on
standard input. Multi-valued features are `|`-joined strings.

Example:
  python -m pipelines.retrieve --workdir=runs/cfm --query='{"user_id": "42"}'
  echo '{"user_id": "7"}' | python -m pipelines.retrieve --workdir=runs/cfm
"""

import json
import sys

from absl import app, flags

from pipelines import common
from tfr_ssl import workflow

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run.")
_QUERY = flags.DEFINE_string("query", None, "One query as a JSON object.")
_K = flags.DEFINE_integer("top_k", 10, "Items to print per query.")
_EXCLUDE = flags.DEFINE_list("exclude", [], "Item ids never to return.")
_JSON = flags.DEFINE_bool("json", False, "Print JSON lines instead of text.")
flags.mark_flag_as_required("workdir")


def _parse(text: str, where: str) -> dict:
  try:
    query = json.loads(text)
  except json.JSONDecodeError as e:
    raise app.UsageError(f"{where}: not JSON ({e})") from None
  if not isinstance(query, dict):
    raise app.UsageError(f"{where}: a query must be a JSON object")
  return query


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _QUERY.value is not None:
    queries = [_parse(_QUERY.value, "--query")]
  else:
    queries = [
      _parse(line, f"stdin line {n}")
      for n, line in enumerate(sys.stdin, 1)
      if line.strip()
    ]
  results = common.run_or_fail(
    workflow.retrieve,
    _WORKDIR.value,
    queries,
    exclude=[_EXCLUDE.value] * len(queries),
    k=_K.value,
  )
  for query, hits in zip(queries, results, strict=True):
    if _JSON.value:
      print(json.dumps({"query": query, "items": hits}))
      continue
    print(f"query {json.dumps(query)}")
    for rank, hit in enumerate(hits, 1):
      features = "  ".join(f"{k}={v}" for k, v in hit["features"].items())
      print(f"  {rank:3d}. {hit['id']:>12}  {hit['score']:+.4f}  {features}")


if __name__ == "__main__":
  app.run(main)
