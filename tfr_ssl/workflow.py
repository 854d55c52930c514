"""Whole-run steps on a workdir: export, build the index, evaluate, retrieve.

Each binary in pipelines/ is one call into this module (training is
`train.train_and_evaluate`). These functions read and write the workdir
contract of docs/architecture.md and do no argument parsing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import tensorflow as tf

from tfr_ssl.data import contract, history, query_side
from tfr_ssl.data import csr as eval_csr
from tfr_ssl.evaluation import embed
from tfr_ssl.evaluation import metrics as evaluate
from tfr_ssl.evaluation import pairs as eval_pairs
from tfr_ssl.evaluation import plot as eval_plot
from tfr_ssl.index import audit as index_audit
from tfr_ssl.index import search as index
from tfr_ssl.serving import export, new_items
from tfr_ssl.serving import retrieval as serving
from tfr_ssl.training import train
from tfr_ssl.training import workdir as workdir_lib

EXPORT_DIR = "export"
INDEX_DIR = "index"
EVAL_DIR = "eval"
ITEMS_FILE = "items.jsonl"


class QueryError(ValueError):
  """A query the model cannot take: unknown feature, bad value, bad k."""


def export_run(workdir: str) -> dict:
  """Exports the towers of a trained run to WORKDIR/export/.

  The export's model id derives from the checkpoint's contents and the
  dataset version, so exporting the same checkpoint again keeps an index
  built from the previous export valid.

  Returns:
    The export manifest.
  """
  with workdir_lib.lock(workdir) as workdir:
    return _export_run(workdir)


def model_id(checkpoint: str, dataset_version: str) -> str:
  """A hash of a checkpoint's files (prefix.*) and the dataset version."""
  digest = hashlib.sha256(dataset_version.encode())
  directory, prefix = os.path.split(checkpoint)
  for name in sorted(os.listdir(directory)):
    if name.startswith(prefix + "."):
      digest.update(name[len(prefix) :].encode())
      with open(os.path.join(directory, name), "rb") as f:
        for block in iter(lambda f=f: f.read(1 << 22), b""):
          digest.update(block)
  return digest.hexdigest()[:32]


def _export_run(workdir: str) -> dict:
  # The model of the best validation epoch (the latest without one).
  latest = train.trained_checkpoint(workdir)
  model, prepared, config = train.load_trained_model(workdir)
  return export.export_towers(
    model.query_tower,
    model.item_tower,
    prepared.schema,
    prepared.vocabularies,
    config,
    os.path.join(workdir, EXPORT_DIR),
    extra_manifest={
      # An index records the id of the export it was built from, and is
      # refused once the export holds another model or other data.
      "model_id": model_id(latest, prepared.version),
      "checkpoint": os.path.relpath(latest, workdir),
      "dataset_version": prepared.version,
    },
    extra_files={ITEMS_FILE: _items_jsonl(prepared)},
    history=export.history_input(prepared, train.query_history_length(config)),
  )


def build_index_run(
  workdir: str,
  index_overrides: Mapping[str, object] | None = None,
  add_items: str | None = None,
) -> dict:
  """Embeds the corpus with the exported item tower and saves WORKDIR/index/.

  The index is audited against exact search on sampled queries before it is
  saved; the audit and the query speed go into its manifest. The index
  directory also holds items.jsonl, the features of its items.

  Args:
    workdir: A run with an export.
    index_overrides: Dotted `index.*` settings replacing the run's.
    add_items: Optional CSV of new items (the run's item feature columns),
      embedded by the exported tower and indexed with the corpus; an id
      already in the corpus replaces that item (see `new_items`).

  Returns:
    The index manifest.
  """
  with workdir_lib.lock(workdir) as workdir:
    return _build_index_run(workdir, index_overrides, add_items)


@dataclasses.dataclass
class IndexInputs:
  """What an index is built and audited from (see `index_inputs`).

  Attributes:
    query_tower: The exported query tower.
    item_keys: Item ids, one per corpus row.
    item_raw: Raw string features of those items.
    item_feature_names: The item features, in schema order.
    item_embeddings: float32 `[N, D]` item-tower outputs.
    embed_seconds: Time spent embedding the corpus.
    tune_queries: Query embeddings the search is tuned on.
    audit_queries: Other query embeddings the index is audited on.
    added: What `add_items` added, or None.
    export_manifest: The export's manifest.
  """

  query_tower: object
  item_keys: list
  item_raw: dict
  item_feature_names: list
  item_embeddings: np.ndarray
  embed_seconds: float
  tune_queries: np.ndarray
  audit_queries: np.ndarray
  added: dict | None
  export_manifest: dict


def index_inputs(
  workdir: str, config, add_items: str | None = None
) -> IndexInputs:
  """Embeds a run's corpus and its tuning and audit queries.

  The corpus goes through the exported item tower; queries are rows of the
  query table drawn apart (seeded by `train.seed`) into a tuning and an
  audit set of `index.audit_queries` each, so the audit does not grade the
  index on what it was tuned on. A query tower with a history reads each
  user's history at `eval.split` (`history.query_table`), the one the
  exact evaluation feeds the model, sent as a client sends it.
  """
  export_dir = os.path.join(workdir, EXPORT_DIR)
  if not os.path.exists(os.path.join(export_dir, "manifest.json")):
    raise train.WorkdirError(
      f"{export_dir} has no export: run pipelines.export first."
    )
  export_manifest = export.read_manifest(export_dir)
  prepared, _, _ = workdir_lib.load_dataset(workdir, config)
  item_tower = export.load_tower(os.path.join(export_dir, "item"))
  query_tower = export.load_tower(os.path.join(export_dir, "query"))
  item_keys = prepared.item_keys()
  item_raw = export.raw_features(
    prepared.items, prepared.schema.item_features, prepared.vocabularies
  )
  added = None
  if add_items:
    update = new_items.read(
      add_items, contract.Schema.from_dict(export_manifest["schema"])
    )
    item_keys, item_raw, added = new_items.merge(item_keys, item_raw, update)
  started = time.perf_counter()
  item_embeddings = embed_raw(item_tower, item_raw)
  embed_seconds = time.perf_counter() - started

  query_table, query_feats = _query_table(
    prepared,
    config.model.task,
    config.eval.split,
    export_manifest.get("history_length", 0),
  )
  num_rows = next(iter(query_table.values())).shape[0]
  rng = np.random.default_rng(config.train.seed)
  order = rng.permutation(num_rows)
  n = min(config.index.audit_queries, num_rows // 2)
  tune_rows, audit_rows = np.sort(order[:n]), np.sort(order[n : 2 * n])

  def embed_queries(rows):
    return embed_raw(
      query_tower, _raw_queries(prepared, query_table, query_feats, rows)
    )

  return IndexInputs(
    query_tower=query_tower,
    item_keys=item_keys,
    item_raw=item_raw,
    item_feature_names=[f.name for f in prepared.schema.item_features],
    item_embeddings=item_embeddings,
    embed_seconds=embed_seconds,
    tune_queries=embed_queries(tune_rows),
    audit_queries=embed_queries(audit_rows),
    added=added,
    export_manifest=export_manifest,
  )


def _build_index_run(workdir, index_overrides, add_items) -> dict:
  config = train.read_config(workdir).override(dict(index_overrides or {}))
  workdir_lib.check_config(config)
  inputs = index_inputs(workdir, config, add_items)
  export_manifest = inputs.export_manifest
  item_embeddings = inputs.item_embeddings
  searcher = index.build_searcher(
    item_embeddings,
    np.array(inputs.item_keys),
    config.index,
    tune_queries=inputs.tune_queries,
  )
  audit = index_audit.audit_recall(
    searcher, inputs.audit_queries, item_embeddings, k=config.index.k
  )
  speed = index_audit.benchmark_search(
    searcher, inputs.audit_queries, item_embeddings
  )
  manifest = {
    "model_id": export_manifest["model_id"],
    "schema": export_manifest["schema"],
    "task": export_manifest["task"],
    "query_features": export_manifest["query_features"],
    "output_dim": int(item_embeddings.shape[1]),
    "num_items": int(item_embeddings.shape[0]),
    "k": config.index.k,
    "index_config": config.index.__dict__,
    "audit": audit,
    "speed": speed,
    "embed_seconds": inputs.embed_seconds,
    "added_items": inputs.added,
    "versions": export.versions(),
  }
  return new_items.write_with_items(
    os.path.join(workdir, INDEX_DIR),
    new_items.items_jsonl(
      inputs.item_keys, inputs.item_raw, inputs.item_feature_names
    ),
    lambda path: serving.save_retrieval_model(
      inputs.query_tower, searcher, path, manifest, k=config.index.k
    ),
  )


def evaluate_run(
  workdir: str,
  use_index: bool = False,
  compare: Sequence[str] = (),
  split: str | None = None,
  max_pairs: int = 0,
) -> dict:
  """Full-corpus metrics of a run and of a baseline, written to WORKDIR/eval/.

  The pairs and exclusions are those of `eval_pairs.select_pairs` (on the
  test split the query's training and validation positives are excluded;
  `metrics["excluded"]` says which). A most-popular recommender is scored
  on the same pairs with the same exclusions, under
  `metrics["baseline"]["most_popular"]`, and drawn in the plot.

  Args:
    workdir: The run.
    use_index: Retrieve through the saved index instead of exact search.
    compare: Other workdirs whose eval/metrics.json the plot overlays.
    split: Overrides the config's evaluation split.
    max_pairs: Score a uniform sample of whole queries holding about this
      many held-out pairs (0 = all; seeded by `train.seed`; see
      eval_pairs.py). Every item stays a candidate; the cost of scoring all
      pairs grows with queries x items, which is quadratic in the corpus
      when the users grow with it.

  Returns:
    The metrics, with `protocol` (the selection rules and their counts, the
    definition of cold; `eval_pairs.protocol`) and `evaluated` (the
    checkpoint and epoch scored; `evaluated_checkpoint`).

  Raises:
    WorkdirError: a `compare` run has no eval/metrics.json (checked before
      evaluating), or the workdir cannot be used.
    ValueError: a negative `max_pairs`.
  """
  compared = {}
  for other in compare:
    path = os.path.join(other, EVAL_DIR, "metrics.json")
    try:
      with open(path) as f:
        compared[os.path.basename(os.path.normpath(other))] = json.load(f)
    except FileNotFoundError:
      raise train.WorkdirError(
        f"--compare={other}: {path} does not exist; evaluate that run first "
        f"(pipelines.evaluate --workdir={other})."
      ) from None
    except json.JSONDecodeError as e:
      raise train.WorkdirError(f"--compare={other}: {path}: {e}") from None
  with workdir_lib.lock(workdir) as workdir:
    return _evaluate_run(workdir, use_index, compared, split, max_pairs)


def _evaluate_run(workdir, use_index, compared, split, max_pairs) -> dict:
  if use_index:
    # The saved index embeds the queries itself: no model to rebuild.
    config = train.read_config(workdir)
    prepared, _, _ = workdir_lib.load_dataset(workdir, config)
  else:
    model, prepared, config = train.load_trained_model(workdir)
  split = split or config.eval.split
  started = time.perf_counter()
  pairs = eval_pairs.select_pairs(
    prepared, split, config.model.task, max_pairs, config.train.seed
  )
  if use_index:
    metrics = _evaluate_through_index(workdir, prepared, config, pairs)
    checkpoint = os.path.join(
      workdir,
      export.read_manifest(os.path.join(workdir, EXPORT_DIR))["checkpoint"],
    )
  else:
    checkpoint = train.trained_checkpoint(workdir)
    history_length = train.query_history_length(config)
    item_embeddings = embed.embed_rows(model.item_tower, prepared.items)
    metrics = embed.evaluate_model(
      model.query_tower,
      model.item_tower,
      prepared,
      split,
      config.eval,
      pairs=pairs,
      history_length=history_length,
      item_embeddings=item_embeddings,
    )
    if not query_side.query_side(config.model.task).is_item:
      held = embed.evaluate_heldout(
        model.query_tower,
        item_embeddings,
        prepared,
        config.eval,
        history_length,
        split,
      )
      if held is not None:
        metrics["heldout_users"] = held
  metrics["seconds"] = time.perf_counter() - started
  metrics["split"] = split
  metrics["search"] = "index" if use_index else "exact"
  metrics["max_pairs"] = max_pairs
  metrics["evaluated"] = evaluated_checkpoint(
    workdir, checkpoint, prepared.version, use_index
  )
  metrics["baseline"] = {
    "most_popular": most_popular_baseline(
      prepared,
      pairs,
      metrics["ks"],
      config.eval.head_fraction,
      embed.user_slices(prepared, pairs, config.eval),
    )
  }
  eval_dir = os.path.join(workdir, EVAL_DIR)
  name = "metrics_index.json" if use_index else "metrics.json"
  evaluate.write_metrics(metrics, os.path.join(eval_dir, name))
  runs = {os.path.basename(os.path.normpath(workdir)): metrics}
  for name, other_metrics in compared.items():
    runs[name] = other_metrics
  runs.setdefault("most popular", metrics["baseline"]["most_popular"])
  eval_plot.plot_recall_by_decile(
    runs, os.path.join(eval_dir, "recall_by_decile.png")
  )
  return metrics


def evaluated_checkpoint(
  workdir: str, checkpoint: str, dataset_version: str, use_index: bool
) -> dict:
  """Which trained model an evaluation scored, for metrics.json.

  Args:
    workdir: The run.
    checkpoint: Prefix of the checkpoint the scored model came from: the
      one restored (exact search), or the one the export was made from
      (through the index).
    dataset_version: The run's dataset version (part of the export's id).
    use_index: The model is the export's: its epoch is that of WORKDIR/best/
      only if best/ still holds the exported checkpoint.

  Returns:
    `checkpoint` (relative to the workdir), `selected_by`, and `epoch`,
    `step` and the validation figure of the best epoch when the checkpoint
    is WORKDIR/best/ (else `epoch` None and the step of the checkpoint's
    name, `ckpt-<step>`).
  """
  record = {
    "checkpoint": os.path.relpath(checkpoint, workdir),
    "selected_by": "latest checkpoint; the run never validated",
    "epoch": None,
    "step": None,
  }
  best = train.best_checkpoint(workdir)
  if best is not None and os.path.abspath(best[0]) == os.path.abspath(
    checkpoint
  ):
    path, entry = best
    if use_index:
      exported = export.read_manifest(os.path.join(workdir, EXPORT_DIR))
      if model_id(path, dataset_version) != exported["model_id"]:
        record["selected_by"] = "best validation epoch when exported"
        return record
    record["selected_by"] = f"best validation {train.SELECT_BY}"
    record["epoch"] = entry.get("epoch")
    record["step"] = entry.get("step")
    record[f"validation_{train.SELECT_BY}"] = entry.get(train.SELECT_BY)
    return record
  name = os.path.basename(checkpoint)
  if name.startswith("ckpt-") and name[5:].isdigit():
    record["step"] = int(name[5:])
  return record


def most_popular_baseline(
  prepared: contract.PreparedDataset,
  pairs: eval_pairs.EvalPairs,
  ks: Sequence[int],
  head_fraction: float,
  pair_slices: Mapping[str, np.ndarray] | None = None,
) -> dict:
  """Metrics of ranking every item by training count, on `pairs`.

  The same pairs and exclusions as the model's evaluation, and the same
  training counts (those of the rows the task trains on); see
  `evaluate.evaluate_most_popular`.
  """
  started = time.perf_counter()
  metrics = evaluate.evaluate_most_popular(
    query_side.query_side(pairs.task).item_train_count(prepared),
    pairs.query_of_pair,
    pairs.targets,
    exclude=pairs.excluded_items,
    ks=ks,
    head_fraction=head_fraction,
    pair_slices=pair_slices,
  )
  metrics["excluded"] = list(pairs.exclusion_sources)
  metrics["seconds"] = time.perf_counter() - started
  return metrics


def load_retriever(workdir: str):
  """Loads WORKDIR/index/ (the retrieval SavedModel), checked for this run."""
  export_manifest = export.read_manifest(os.path.join(workdir, EXPORT_DIR))
  return serving.load_retrieval_model(
    os.path.join(workdir, INDEX_DIR),
    expected_manifest={
      "model_id": export_manifest["model_id"],
      "output_dim": export_manifest["output_dim"],
      "query_features": export_manifest["query_features"],
    },
  )


def retrieve(
  workdir: str,
  queries: Iterable[Mapping[str, str]],
  exclude: Sequence[Sequence[str]] | None = None,
  k: int | None = None,
) -> list[list[dict]]:
  """Top-k items for raw queries, with their features.

  Args:
    workdir: A run with an index.
    queries: One dict of raw feature values per query (multi-valued
      features as `|`-joined strings; missing features count as unknown).
      With a history query tower, `history` holds the user's item ids,
      oldest first: a list of strings or a `|`-joined string. Without
      one (or empty), a user of the data reads the history known at
      export; any other user, an empty history (see `export`).
    exclude: Item ids to leave out, per query.
    k: How many items to return, from 1 to the index's k (the bound the
      service's `top_k` has too); None: the index's k.

  Returns:
    Per query, a list of {"id", "score", "features"} dicts, best first.

  Raises:
    QueryError: k out of range, a feature the model does not have, a
      value that is not a string or not Unicode text, or a history element
      that is not a string (names the query and the feature).
  """
  if k is not None and k <= 0:
    raise QueryError(f"k (--top_k) must be >= 1, got {k}.")
  retriever = load_retriever(workdir)
  manifest = retriever.manifest
  if k is not None and k > manifest["k"]:
    raise QueryError(
      f"k (--top_k) is {k}, more than the {manifest['k']} items the index "
      f"returns: give at most {manifest['k']}, or rebuild the index with "
      f"--k={k} (pipelines.build_index)."
    )
  names = manifest["query_features"]
  queries = list(queries)
  for number, q in enumerate(queries, 1):
    check_query(q, names, where=f"query {number}")
  raw = {
    name: tf.constant([_raw_value(q.get(name, "")) for q in queries])
    for name in names
  }
  scores, ids = retriever(raw, exclude=exclude)
  # The index's own list knows items added with --add_items; an index
  # written without one falls back to the export's.
  items_path = os.path.join(workdir, INDEX_DIR, ITEMS_FILE)
  if not os.path.exists(items_path):
    items_path = os.path.join(workdir, EXPORT_DIR, ITEMS_FILE)
  items = _read_items(items_path)
  k = k or manifest["k"]
  out = []
  for row_scores, row_ids in zip(scores.numpy(), ids.numpy(), strict=True):
    hits = []
    for score, item_id in zip(row_scores[:k], row_ids[:k], strict=True):
      key = item_id.decode()
      if not key:
        continue
      hits.append(
        {"id": key, "score": float(score), "features": items.get(key, {})}
      )
    out.append(hits)
  return out


def check_query(query: Mapping, names: Sequence[str], where: str) -> None:
  """Refuses unknown features and values that are not strings.

  `history` (when `names` has it) may also be a list of item ids, each a
  string.

  Raises:
    QueryError: names `where` (e.g. "query 3") and the feature.
  """
  unknown = sorted(set(query) - set(names))
  if history.HISTORY in unknown:
    raise QueryError(
      f"{where}: this model's query tower reads no history (its export has "
      "no 'history' input: model.history_length is 0, or the queries are "
      "items); leave 'history' out."
    )
  if unknown:
    raise QueryError(
      f"{where}: unknown query feature(s) {_short(unknown)}; this model's "
      f"query features are {names}."
    )
  for name, value in query.items():
    if name == history.HISTORY and isinstance(value, list):
      for number, item in enumerate(value, 1):
        problem = text_problem(item) if isinstance(item, str) else None
        if not isinstance(item, str):
          problem = f"must be an item id (a string), got {_short(item)}"
        if problem:
          raise QueryError(
            f"{where}: feature {name!r}, element {number}: {problem}."
          )
      continue
    problem = text_problem(value) if isinstance(value, str) else None
    if problem:
      raise QueryError(f"{where}: feature {name!r} {problem}.")
    if not isinstance(value, str):
      raise QueryError(
        f"{where}: feature {name!r} must be a string (multi-valued: "
        f"'|'-joined), got {_short(value)}; write it as "
        f"{json.dumps(str(value) if value is not None else '')}."
        if isinstance(value, (int, float))
        else f"{where}: feature {name!r} must be a string (multi-valued: "
        f"'|'-joined), got {_short(value)}."
      )


def text_problem(text: str) -> str | None:
  """Why `text` is not Unicode text, or None.

  JSON may escape a lone UTF-16 surrogate (`"\\ud800"`), which decodes to a
  Python string that no encoding accepts.
  """
  try:
    text.encode("utf-8")
  except UnicodeEncodeError as e:
    return (
      f"holds {text[e.start : e.end]!r} at character {e.start + 1}, a lone "
      "surrogate that is not a Unicode character"
    )
  return None


def _raw_value(value) -> str:
  """A checked query value as the tower takes it (a history list joined)."""
  if isinstance(value, list):
    return export.MULTI_SEPARATOR.join(value)
  return str(value)


def _short(value, limit: int = 80) -> str:
  """repr(value), cut to `limit` characters (input can be huge)."""
  text = json.dumps(value) if not isinstance(value, str) else repr(value)
  return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclasses.dataclass(frozen=True)
class History:
  """A query's user's training interactions (see `query_history`).

  Attributes:
    items: The latest `limit`, each {"id", "features"}, latest first.
    total: How many training interactions the user has.
    item_ids: Every distinct item of them (what a page of results leaves
      out), in no particular order.
    by_time: Whether "latest" is by timestamp; False when the data has none
      and it is the order of the file.
  """

  items: list[dict]
  total: int
  item_ids: list[str]
  by_time: bool


def query_history(
  workdir: str, queries: Sequence[Mapping[str, str]], limit: int = 10
) -> list[History]:
  """Per query, the items its user interacted with in training.

  Most recent first when the data has timestamps (else last in file order
  first), at most `limit`, with their features. A query without the query
  id feature, or with an id the data does not know, gets an empty history.
  """
  config = train.read_config(workdir)
  prepared, _, _ = workdir_lib.load_dataset(workdir, config)
  id_name = prepared.schema.query_id
  # The query id keeps the table's row order: value v is row v.
  row_of = {v: i for i, v in enumerate(prepared.vocabularies[id_name])}
  split = prepared.splits["train"]
  by_time = split.timestamp is not None
  keys = prepared.item_keys()
  items = _read_items(os.path.join(workdir, EXPORT_DIR, ITEMS_FILE))
  out = []
  for query in queries:
    row = row_of.get(query.get(id_name))
    positions = np.zeros(0, np.int64)
    if row is not None:
      positions = np.flatnonzero(split.query_index == row)
      if by_time:
        order = np.argsort(-split.timestamp[positions], kind="stable")
        positions = positions[order]
      else:
        positions = positions[::-1]
    seen = split.item_index[positions]
    out.append(
      History(
        items=[
          {"id": keys[i], "features": items.get(keys[i], {})}
          for i in seen[:limit]
        ],
        total=int(seen.shape[0]),
        item_ids=[keys[i] for i in np.unique(seen)],
        by_time=by_time,
      )
    )
  return out


def user_query(workdir: str, user: str) -> dict[str, str]:
  """The raw query features of one user of the run's data.

  Raises:
    QueryError: the run is not user_to_item, or the user is unknown.
  """
  config = train.read_config(workdir)
  if query_side.query_side(config.model.task).is_item:
    raise QueryError(
      f"--user needs a user_to_item run; {workdir} is {config.model.task}: "
      "give the query item's features with --query."
    )
  prepared, _, _ = workdir_lib.load_dataset(workdir, config)
  schema = prepared.schema
  vocabulary = prepared.vocabularies[schema.query_id]
  row_of = {v: i for i, v in enumerate(vocabulary)}
  if user not in row_of:
    raise QueryError(
      f"--user={_short(user)} is not a {schema.query_id} of this run's data "
      f"({len(vocabulary)} users, e.g. {vocabulary[:3]})."
    )
  raw = export.raw_features(
    prepared.queries,
    schema.query_features,
    prepared.vocabularies,
    np.array([row_of[user]]),
  )
  return {name: str(values[0]) for name, values in raw.items()}


def embed_raw(
  tower, raw: Mapping[str, np.ndarray], batch_size: int = 4096
) -> np.ndarray:
  """Runs an exported tower (`export.load_tower`) over raw string features.

  An input of the tower that `raw` leaves out is sent empty: an unknown
  feature, or no history (as `retrieve` does).
  """
  n = len(next(iter(raw.values())))
  raw = dict(raw)
  for name in _input_names(tower):
    raw.setdefault(name, np.full(n, "", dtype=object))
  out = []
  for start in range(0, n, batch_size):
    batch = {
      name: tf.constant(values[start : start + batch_size].astype(str))
      for name, values in raw.items()
    }
    out.append(tower.serve(batch).numpy())
  return np.concatenate(out).astype(np.float32)


def _input_names(tower) -> list[str]:
  """The inputs of a loaded tower's serving signature ([] if unknown)."""
  signature = getattr(tower, "signatures", {}).get(export.SIGNATURE)
  if signature is None:
    return []
  return list(signature.structured_input_signature[1])


def _query_table(
  prepared: contract.PreparedDataset, task: str, split: str, length: int
) -> tuple[dict[str, np.ndarray], tuple[contract.Feature, ...]]:
  """The query tower's input table when scoring `split` (with `history`
  when `length` > 0, `history.query_table`) and its raw features."""
  table = history.query_table(prepared, task, split, length)
  return table, query_side.query_side(task).features(prepared.schema)


def _raw_queries(
  prepared: contract.PreparedDataset,
  table: Mapping[str, np.ndarray],
  features: Sequence[contract.Feature],
  rows: np.ndarray,
) -> dict[str, np.ndarray]:
  """Rows of a `_query_table` as a client sends them: raw strings, and the
  history as item ids `|`-joined oldest first."""
  raw = export.raw_features(table, features, prepared.vocabularies, rows)
  if history.HISTORY in table:
    raw[history.HISTORY] = export.history_strings(
      table[history.HISTORY][rows], prepared.item_keys()
    )
  return raw


def _evaluate_through_index(workdir, prepared, config, pairs) -> dict:
  """Metrics of the saved retrieval model on raw query features."""
  retriever = load_retriever(workdir)
  queries = pairs.queries
  query_of_pair = pairs.query_of_pair
  # The histories the exact evaluation feeds the model, as a client sends
  # them (the export's length: what the served tower reads).
  exported = export.read_manifest(os.path.join(workdir, EXPORT_DIR))
  table, feats = _query_table(
    prepared, pairs.task, pairs.split, exported.get("history_length", 0)
  )
  raw = _raw_queries(prepared, table, feats, queries)
  keys = np.array(prepared.item_keys())
  # The index drops every listed id: leave the pairs' own items off the
  # lists, so they stay rankable as in the exact evaluation.
  (indptr, indices), target_in_train = eval_csr.exclusion_without_targets(
    pairs.excluded_items, query_of_pair, pairs.targets
  )
  exclude = [
    list(keys[indices[indptr[q] : indptr[q + 1]]]) for q in range(len(queries))
  ]
  row_of_key = {key: i for i, key in enumerate(keys)}
  topk = []
  batch = 256
  for start in range(0, len(queries), batch):
    chunk = {
      name: tf.constant(v[start : start + batch].astype(str))
      for name, v in raw.items()
    }
    _, ids = retriever(chunk, exclude=exclude[start : start + batch])
    topk.append(
      np.array(
        [[row_of_key.get(i.decode(), -1) for i in r] for r in ids.numpy()]
      )
    )
  # The index returns its own k results: deeper cut-offs cannot be scored.
  index_k = retriever.manifest["k"]
  ks = [k for k in config.eval.ks if k <= index_k]
  if len(ks) < len(config.eval.ks):
    logging.warning(
      "The index returns %d items: evaluating K=%s only (not %s).",
      index_k,
      ks,
      [k for k in config.eval.ks if k > index_k],
    )
  if not ks:
    raise train.WorkdirError(
      f"The index returns {index_k} items, fewer than every K in "
      f"{list(config.eval.ks)}: rebuild it with a larger --k."
    )
  metrics = evaluate.metrics_from_topk(
    np.concatenate(topk)[:, : ks[-1]],
    pairs_query=query_of_pair,
    pairs_item=pairs.targets,
    item_train_count=query_side.query_side(pairs.task).item_train_count(
      prepared
    ),
    ks=ks,
    head_fraction=config.eval.head_fraction,
  )
  metrics["num_pairs_target_in_train"] = target_in_train
  metrics["excluded"] = list(pairs.exclusion_sources)
  metrics["protocol"] = eval_pairs.protocol(pairs)
  return metrics


def _items_jsonl(prepared: contract.PreparedDataset) -> str:
  raw = export.raw_features(
    prepared.items, prepared.schema.item_features, prepared.vocabularies
  )
  names = [f.name for f in prepared.schema.item_features]
  keys = prepared.item_keys()
  lines = [
    json.dumps({"id": keys[row], "features": {n: raw[n][row] for n in names}})
    for row in range(prepared.num_items)
  ]
  return "\n".join(lines) + "\n"


def _read_items(path: str) -> dict[str, dict]:
  if not os.path.exists(path):
    logging.warning("%s is missing: items are shown without features.", path)
    return {}
  items = {}
  with open(path) as f:
    for line in f:
      record = json.loads(line)
      items[record["id"]] = record["features"]
  return items


__all__ = [
  "History",
  "build_index_run",
  "embed_raw",
  "evaluate_run",
  "export_run",
  "load_retriever",
  "query_history",
  "retrieve",
  "text_problem",
  "user_query",
]
