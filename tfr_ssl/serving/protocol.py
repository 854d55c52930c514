"""TF Serving's REST request and response bodies, for a retrieval index.

A predict body is TF Serving's row format, `{"instances": [{feature: value,
...}, ...]}`, answered with `{"predictions": [{"ids": [...], "scores":
[...]}, ...]}`, or its columnar format, `{"inputs": {feature: [values]}}`,
answered as TF Serving answers it, with `{"outputs": {"ids": [[...]],
"scores": [[...]]}}`. Values are the raw strings the exported towers take:
one string per categorical feature; for a multi-valued feature a
`|`-joined string or a list of strings. A feature left out is unknown (its
out-of-vocabulary embedding), as in `workflow.retrieve`.

A model whose query tower reads a history has one more input, `history`:
the user's item ids, oldest first, as a list of strings or a `|`-joined
string (`["i1", "i2"]` or `"i1|i2"`). Ids the corpus does not hold drop
out; a query without one reads, for a user the data knows, the history
known at export (see `export`). A history alone is a query: a user the
data does not hold is answered from it.

Beyond TF Serving, each query may carry `exclude` (item ids never to
return) and `top_k` (1..the index's k; a body-level `top_k` applies to every
query), and `"item_features": true` adds the features of each returned item.

As in TF Serving, any string value may be sent base64-encoded as
`{"b64": "..."}`; it is decoded before use.

Every problem is a `RequestError` whose message starts with the field it is
about (`instances[2].user_id: ...`), so a client can fix its request without
reading server logs. Validation is complete: a request that passes it holds
only values the model takes (every string valid UTF-8), so it cannot fail the
batch it joins. Unknown feature values are not refused: the model maps them
to its out-of-vocabulary embedding.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from tfr_ssl.serving import export
from tfr_ssl.serving import retrieval as serving

# Top-level keys of a predict body.
BODY_KEYS = ("signature_name", "instances", "inputs", "top_k", "item_features")
DEFAULT_SIGNATURE = "serving_default"
SIGNATURES = (DEFAULT_SIGNATURE, serving.EXCLUDE_SIGNATURE)
B64 = "b64"
TOP_K = "top_k"
EXCLUDE = serving.EXCLUDE_KEY
HISTORY = export.HISTORY


class RequestError(Exception):
  """A request the service refuses, with its HTTP status.

  Args:
    message: What is wrong, starting with the field it is about.
    status: The HTTP status (4xx; 503 when the service is overloaded; 500
      for a model call that failed, already logged).
  """

  def __init__(self, message: str, status: int = 400):
    super().__init__(message)
    self.message = message
    self.status = status


@dataclasses.dataclass(frozen=True)
class Query:
  """One query of a predict request, validated.

  Attributes:
    features: Raw feature values by name (only names the model has).
    exclude: Item ids never to return.
    top_k: How many results to return.
  """

  features: dict[str, str]
  exclude: tuple[str, ...] = ()
  top_k: int = 10


@dataclasses.dataclass(frozen=True)
class Predict:
  """A parsed predict request.

  Attributes:
    queries: The queries, in request order.
    columnar: The request used `inputs` (answered with `outputs`).
    item_features: Return the features of each returned item.
  """

  queries: list[Query]
  columnar: bool
  item_features: bool


@dataclasses.dataclass(frozen=True)
class Limits:
  """Bounds on a predict request.

  Attributes:
    max_instances: Queries per request.
    max_exclude: Excluded ids per query.
    max_value_chars: Characters in one feature value.
  """

  max_instances: int = 256
  max_exclude: int = 1000
  max_value_chars: int = 1000


def _type_name(value: Any) -> str:
  if value is None:
    return "null"
  if isinstance(value, bool):
    return "a boolean"
  if isinstance(value, int | float):
    return "a number"
  if isinstance(value, str):
    return "a string"
  if isinstance(value, list):
    return "a list"
  if isinstance(value, dict):
    return "an object"
  return type(value).__name__


def parse_json(body: bytes) -> Any:
  """The JSON value of a request body.

  Raises:
    RequestError: the body is empty, not UTF-8, or not JSON.
  """
  if not body.strip():
    raise RequestError("body: empty; expected a JSON object")
  try:
    text = body.decode("utf-8")
  except UnicodeDecodeError as e:
    raise RequestError(
      f"body: not UTF-8 (byte {e.start} cannot be decoded)"
    ) from None
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise RequestError(
      f"body: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})"
    ) from None
  except RecursionError:
    raise RequestError("body: JSON nested too deeply") from None
  except ValueError as e:
    # Python refuses to parse integers of more than 4300 digits
    # (sys.get_int_max_str_digits): no count or bound needs one.
    raise RequestError(f"body: a number is too long ({e})") from None


def _top_k(value: Any, where: str, max_k: int) -> int:
  if isinstance(value, bool) or not isinstance(value, int):
    raise RequestError(
      f"{where}: must be an integer from 1 to {max_k}, got {_type_name(value)}"
    )
  if not 1 <= value <= max_k:
    shown = str(value) if -(10**12) < value < 10**12 else "a larger number"
    raise RequestError(
      f"{where}: must be from 1 to {max_k} (the index returns {max_k} "
      f"items), got {shown}"
    )
  return value


def _string(value: Any, where: str) -> str | None:
  """`value` as a string the model takes, or None if it is not a string.

  A string is a JSON string or, as TF Serving accepts for every string
  input, `{"b64": "<base64>"}` whose bytes are decoded. Either way it must
  be valid Unicode text: JSON lets a body carry a lone surrogate
  (`"\\ud800"`), which no UTF-8 encoder (and so no string tensor) takes.

  Raises:
    RequestError: a b64 object that does not decode, or text that is not
      valid Unicode.
  """
  if isinstance(value, dict) and set(value) == {B64}:
    encoded = value[B64]
    where = f"{where}.{B64}"
    if not isinstance(encoded, str):
      raise RequestError(
        f"{where}: expected a base64 string, got {_type_name(encoded)}"
      )
    try:
      raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as e:
      raise RequestError(f"{where}: not valid base64 ({e})") from None
    try:
      return raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise RequestError(
        f"{where}: the decoded bytes are not UTF-8 text (byte {e.start})"
      ) from None
  if not isinstance(value, str):
    return None
  try:
    value.encode("utf-8")
  except UnicodeEncodeError as e:
    raise RequestError(
      f"{where}: not valid Unicode text (a lone surrogate "
      f"\\u{ord(value[e.start]):04x} at character {e.start})"
    ) from None
  return value


def _exclude(value: Any, where: str, limits: Limits) -> tuple[str, ...]:
  if not isinstance(value, list):
    raise RequestError(
      f"{where}: must be a list of item ids (strings), got {_type_name(value)}"
    )
  if len(value) > limits.max_exclude:
    raise RequestError(
      f"{where}: at most {limits.max_exclude} item ids, got {len(value)}"
    )
  ids = []
  for i, item in enumerate(value):
    text = _string(item, f"{where}[{i}]")
    if text is None:
      raise RequestError(
        f"{where}[{i}]: item ids are strings, got {_type_name(item)}"
      )
    ids.append(text)
  return tuple(ids)


def _joined(values: list, where: str, what: str) -> str:
  """A JSON list of strings, `|`-joined; `what` names them in the error."""
  parts = []
  for i, part in enumerate(values):
    text = _string(part, f"{where}[{i}]")
    if text is None:
      raise RequestError(
        f"{where}[{i}]: {what} are strings, got {_type_name(part)}"
      )
    parts.append(text)
  return export.MULTI_SEPARATOR.join(parts)


def _bounded(value: str, where: str, limits: Limits) -> str:
  if len(value) > limits.max_value_chars:
    raise RequestError(
      f"{where}: longer than {limits.max_value_chars} characters"
    )
  return value


def _history(value: Any, where: str, limits: Limits) -> str:
  """A history (a list of item ids or a `|`-joined string), `|`-joined."""
  if isinstance(value, list):
    value = _joined(value, where, "item ids")
  elif (text := _string(value, where)) is not None:
    value = text
  else:
    raise RequestError(
      f"{where}: expected a list of item ids, oldest first (strings), or "
      f'a "|"-joined string, got {_type_name(value)}'
    )
  return _bounded(value, where, limits)


def _value(value: Any, where: str, feature, limits: Limits) -> str:
  """A raw feature value as the tower takes it (multi: `|`-joined)."""
  if feature.name == HISTORY:
    return _history(value, where, limits)
  if feature.multi and isinstance(value, list):
    value = _joined(value, where, "values of a multi-valued feature")
  elif (text := _string(value, where)) is not None:
    value = text
  else:
    expected = (
      'a string, or a list of strings (e.g. "a|b" or ["a", "b"])'
      if feature.multi
      else "a string"
    )
    hint = ' (send numbers as strings, e.g. "42")' if not feature.multi else ""
    raise RequestError(
      f"{where}: {feature.name} is {feature.kind}: expected {expected}, got "
      f"{_type_name(value)}{hint}"
    )
  return _bounded(value, where, limits)


def _unknown_feature(name: str, where: str, features) -> RequestError:
  names = [f.name for f in features]
  if name == HISTORY:
    return RequestError(
      f"{where}: this model's query tower reads no history; leave it out"
    )
  return RequestError(
    f"{where}: unknown feature {name!r}; this model's query features are "
    f"{names} (plus {EXCLUDE!r} and {TOP_K!r})"
  )


def parse_predict(
  body: Any, features: Sequence, max_k: int, limits: Limits = Limits()
) -> Predict:
  """Validates a predict body against the serving version's features.

  Args:
    body: The parsed JSON body.
    features: The query features (objects with `name`, `kind`, `multi`).
    max_k: The index's k, the bound of `top_k` and its default.
    limits: Request bounds.

  Returns:
    The queries.

  Raises:
    RequestError: naming the field that is wrong.
  """
  if not isinstance(body, dict):
    raise RequestError(
      f"body: expected a JSON object with instances or inputs, got "
      f"{_type_name(body)}"
    )
  for key in body:
    if key not in BODY_KEYS:
      raise RequestError(
        f"{key}: unknown field; a predict body has {list(BODY_KEYS)}"
      )
  # TF Serving reads a missing or null signature_name as the default.
  signature = body.get("signature_name")
  if signature is None:
    signature = DEFAULT_SIGNATURE
  if signature not in SIGNATURES:
    raise RequestError(
      f"signature_name: unknown signature {signature!r}; this model has "
      f"{list(SIGNATURES)}"
    )
  item_features = body.get("item_features", False)
  if not isinstance(item_features, bool):
    raise RequestError(
      f"item_features: expected true or false, got {_type_name(item_features)}"
    )
  default_k = max_k
  if TOP_K in body:
    default_k = _top_k(body[TOP_K], TOP_K, max_k)
  has_rows, has_columns = "instances" in body, "inputs" in body
  if has_rows == has_columns:
    raise RequestError(
      "instances: a predict body has exactly one of instances (one object "
      "per query) or inputs (one list per feature)"
      + ("; both were given" if has_rows else "; neither was given")
    )
  by_name = {f.name: f for f in features}
  if has_rows:
    queries = _parse_instances(
      body["instances"], by_name, default_k, max_k, limits
    )
  else:
    queries = _parse_inputs(body["inputs"], by_name, default_k, limits)
  return Predict(queries, columnar=has_columns, item_features=item_features)


def _parse_instances(instances, by_name, default_k, max_k, limits) -> list:
  if not isinstance(instances, list):
    raise RequestError(
      f"instances: expected a list of query objects, got "
      f"{_type_name(instances)}"
    )
  if not instances:
    raise RequestError("instances: empty; send at least one query")
  if len(instances) > limits.max_instances:
    raise RequestError(
      f"instances: at most {limits.max_instances} queries per request, got "
      f"{len(instances)}"
    )
  queries = []
  for row, instance in enumerate(instances):
    where = f"instances[{row}]"
    if not isinstance(instance, dict):
      raise RequestError(
        f"{where}: expected an object of query features, got "
        f"{_type_name(instance)}"
      )
    values, exclude, top_k = {}, (), default_k
    for name, value in instance.items():
      field = f"{where}.{name}"
      if name == EXCLUDE:
        exclude = _exclude(value, field, limits)
      elif name == TOP_K:
        top_k = _top_k(value, field, max_k)
      elif name in by_name:
        values[name] = _value(value, field, by_name[name], limits)
      else:
        raise _unknown_feature(name, field, by_name.values())
    if not values:
      raise RequestError(
        f"{where}: no query feature given; expected some of {list(by_name)}"
      )
    queries.append(Query(values, exclude, top_k))
  return queries


def _parse_inputs(inputs, by_name, default_k, limits) -> list:
  if not isinstance(inputs, dict):
    raise RequestError(
      f"inputs: expected an object of feature -> list of values, got "
      f"{_type_name(inputs)}"
    )
  columns = {}
  for name, values in inputs.items():
    where = f"inputs.{name}"
    if name == TOP_K:
      raise RequestError(
        f"{where}: give top_k beside inputs, not inside (one value for all "
        "queries)"
      )
    if name != EXCLUDE and name not in by_name:
      raise _unknown_feature(name, where, by_name.values())
    if not isinstance(values, list):
      raise RequestError(
        f"{where}: expected a list with one entry per query, got "
        f"{_type_name(values)}"
      )
    columns[name] = values
  features = [n for n in columns if n != EXCLUDE]
  if not features:
    raise RequestError(
      f"inputs: no query feature given; expected some of {list(by_name)}"
    )
  size = len(columns[features[0]])
  if size == 0:
    raise RequestError(f"inputs.{features[0]}: empty; send at least one query")
  if size > limits.max_instances:
    raise RequestError(
      f"inputs.{features[0]}: at most {limits.max_instances} queries per "
      f"request, got {size}"
    )
  for name, values in columns.items():
    if len(values) != size:
      raise RequestError(
        f"inputs.{name}: {len(values)} entries, but inputs.{features[0]} has "
        f"{size}; every input has one entry per query"
      )
  queries = []
  for row in range(size):
    values = {
      n: _value(columns[n][row], f"inputs.{n}[{row}]", by_name[n], limits)
      for n in features
    }
    exclude = ()
    if EXCLUDE in columns:
      exclude = _exclude(
        columns[EXCLUDE][row], f"inputs.exclude[{row}]", limits
      )
    queries.append(Query(values, exclude, default_k))
  return queries


def predict_response(
  predict: Predict, results: Sequence[tuple[list[str], list[float]]], items
) -> dict:
  """The response body for `predict` given each query's (ids, scores).

  Args:
    predict: The request.
    results: Per query, its ids and scores, best first.
    items: item id -> features (used when `item_features` was asked).
  """
  rows = []
  for ids, scores in results:
    row = {"ids": list(ids), "scores": list(scores)}
    if predict.item_features:
      row["features"] = [items.get(i, {}) for i in ids]
    rows.append(row)
  if not predict.columnar:
    return {"predictions": rows}
  return {"outputs": {key: [row[key] for row in rows] for key in rows[0]}}
