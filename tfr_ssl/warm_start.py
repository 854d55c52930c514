"""Warm start: initialise a model on new data from an earlier run.

Production retrievers are retrained on fresh data every day, and the new
vocabularies differ from the old ones: new items and users appear, some
disappear. Starting from scratch throws away what was learned about every
value still present. Here, every variable is copied from the old checkpoint
by its object path; an embedding table whose vocabulary changed is copied
row by row by raw value, and only values new to the vocabulary keep their
fresh initialisation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

Path = tuple[str, ...]


def variables_by_path(root: tf.Module | object) -> dict[Path, tf.Variable]:
  """Every variable reachable from `root`, keyed by its checkpoint path."""
  view = tf.train.TrackableView(root)
  out: dict[Path, tf.Variable] = {}
  seen: set[int] = set()

  def walk(obj, path):
    for name, child in view.children(obj).items():
      if id(child) in seen:
        continue
      seen.add(id(child))
      if isinstance(child, tf.Variable):
        out[(*path, name)] = child
      else:
        walk(child, (*path, name))

  walk(root, ())
  return out


def checkpoint_keys_by_path(prefix: str) -> dict[Path, str]:
  """The variable keys of a tf.train.Checkpoint, keyed by object path."""
  reader = tf.train.load_checkpoint(prefix)
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
  out: dict[Path, str] = {}
  stack = [(0, ())]
  visited = set()
  while stack:
    node_id, path = stack.pop()
    if node_id in visited:
      continue
    visited.add(node_id)
    node = graph.nodes[node_id]
    for attribute in node.attributes:
      if attribute.name == "VARIABLE_VALUE":
        out[path] = attribute.checkpoint_key
    for child in node.children:
      stack.append((child.node_id, (*path, child.local_name)))
  return out


def remap_rows(
  old_table: np.ndarray,
  new_table: np.ndarray,
  old_vocabulary: Sequence[str],
  new_vocabulary: Sequence[str],
) -> tuple[np.ndarray, int]:
  """Copies the rows of values known to both vocabularies.

  Row 0 is the out-of-vocabulary bucket and vocabulary entry v is row v + 1
  (the dataset contract); extra rows beyond the vocabulary (if a table has
  any) are copied when both tables have them.

  Returns:
    The new table and the number of vocabulary rows copied.
  """
  table = new_table.copy()
  table[0] = old_table[0]
  old_row = {value: i + 1 for i, value in enumerate(old_vocabulary)}
  new_rows, old_rows = [], []
  for i, value in enumerate(new_vocabulary):
    j = old_row.get(value)
    if j is not None and j < old_table.shape[0]:
      new_rows.append(i + 1)
      old_rows.append(j)
  table[new_rows] = old_table[old_rows]
  return table, len(new_rows)


def warm_start(
  root: tf.Module | object,
  old_prefix: str,
  tables: Mapping[str, Sequence[tf.Variable]],
  old_vocabularies: Mapping[str, Sequence[str]],
  new_vocabularies: Mapping[str, Sequence[str]],
  skip: Sequence[str] = (),
) -> dict[str, int]:
  """Assigns the variables of `root` from an old checkpoint.

  Args:
    root: The object the old checkpoint was saved from (same structure), for
      example `tf.train.Checkpoint(model=model)`; variables must exist.
    old_prefix: Checkpoint prefix of the earlier run.
    tables: feature name -> its embedding table variables in `root`.
    old_vocabularies: Vocabularies of the earlier run.
    new_vocabularies: Vocabularies of this run.
    skip: Path components whose variables keep their initial value (for
      example state keyed by corpus row, which means nothing on new data).

  Returns:
    Counts: variables copied, tables remapped, values carried over, values
    new to the vocabulary, variables left at their initial value.

  Raises:
    ValueError: a variable that is not an embedding table changed shape (the
      model architecture differs from the earlier run's).
  """
  reader = tf.train.load_checkpoint(old_prefix)
  old_keys = checkpoint_keys_by_path(old_prefix)
  feature_of = {
    id(v): name for name, variables in tables.items() for v in variables
  }
  counts = dict(copied=0, remapped=0, carried=0, new_values=0, fresh=0)
  for path, variable in variables_by_path(root).items():
    key = old_keys.get(path)
    if key is None or any(part in skip for part in path):
      counts["fresh"] += 1
      continue
    old_value = reader.get_tensor(key)
    feature = feature_of.get(id(variable))
    if feature is not None:
      table, carried = remap_rows(
        old_value,
        variable.numpy(),
        old_vocabularies[feature],
        new_vocabularies[feature],
      )
      variable.assign(table)
      counts["remapped"] += 1
      counts["carried"] += carried
      counts["new_values"] += len(new_vocabularies[feature]) - carried
    elif tuple(old_value.shape) == tuple(variable.shape):
      variable.assign(old_value)
      counts["copied"] += 1
    else:
      raise ValueError(
        f"Cannot warm-start {'/'.join(path)}: shape {variable.shape} "
        f"here, {old_value.shape} in {old_prefix}. Only embedding tables "
        "may change size; use the earlier run's model settings."
      )
  logging.info("Warm start from %s: %s", old_prefix, counts)
  return counts
