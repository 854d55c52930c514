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

import collections
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

Path = tuple[str, ...]


def variables_by_key(root: tf.Module | object) -> dict[str, tf.Variable]:
  """Every variable reachable from `root`, keyed by its checkpoint key.

  TensorFlow names a variable in a checkpoint by the first path that reaches
  it in a breadth-first walk of the object graph (children in order); a
  variable reachable several ways (a layer's weight is also an item of a
  list attribute) gets that one key. This walk reproduces it, so the keys
  match those `tf.train.Checkpoint(...)` writes for the same structure.
  """
  view = tf.train.TrackableView(root)
  out: dict[str, tf.Variable] = {}
  seen = {id(root)}
  queue = collections.deque([(root, ())])
  while queue:
    obj, path = queue.popleft()
    for name, child in view.children(obj).items():
      if id(child) in seen:
        continue
      seen.add(id(child))
      child_path = (*path, name)
      if isinstance(child, tf.Variable):
        out[_checkpoint_key(child_path)] = child
      else:
        queue.append((child, child_path))
  return out


def _checkpoint_key(path: Path) -> str:
  # TensorFlow's escaping of object names inside a key.
  escaped = (p.replace(".", "..").replace("/", ".S") for p in path)
  return "/".join(escaped) + "/.ATTRIBUTES/VARIABLE_VALUE"


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
  old_keys = set(reader.get_variable_to_shape_map())
  feature_of = {
    id(v): name for name, variables in tables.items() for v in variables
  }
  counts = dict(copied=0, remapped=0, carried=0, new_values=0, fresh=0)
  for key, variable in variables_by_key(root).items():
    if key not in old_keys or any(part in skip for part in key.split("/")):
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
        f"Cannot warm-start {key.split('/.ATTRIBUTES')[0]}: shape "
        f"{variable.shape} here, {old_value.shape} in {old_prefix}. Only "
        "embedding tables may change size; use the earlier run's model "
        "settings."
      )
  logging.info("Warm start from %s: %s", old_prefix, counts)
  return counts
