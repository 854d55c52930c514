"""Per-query item lists as CSR: row selection, entries, targets left out.

A data structure of the prepared data (`PreparedDataset.train_items_by_query`
is one) that the evaluation applies, so it lives with the data.

Evaluation keeps "the corpus rows query q must not be recommended" as one
compressed sparse row pair `(indptr int [Q + 1], indices int [nnz])`: row q
holds `indices[indptr[q]:indptr[q + 1]]`. Building those lists
(`from_entries`: the training items of each user in
`data.stats.items_by_query`, the exclusions of `eval_pairs`) and applying
them (`evaluate`, the index, the most-popular baseline) share the helpers
here, so that a rule about them, above all "a pair's own held-out item stays
rankable", is written once.

Set operations sort instead of hashing: numpy 2's np.unique and np.isin
hash plain 1-D input, an order of magnitude slower than a sort on millions
of int64 keys.
"""

from __future__ import annotations

import numpy as np

Csr = tuple[np.ndarray, np.ndarray]


def select_csr_rows(csr: Csr, rows: np.ndarray) -> Csr:
  """The CSR sub-matrix of `rows`, renumbered 0..len(rows)-1.

  Args:
    csr: (indptr [R + 1], indices [nnz]).
    rows: Rows to keep, in the order wanted.

  Returns:
    (indptr [len(rows) + 1], indices) of the selected rows.
  """
  indptr, indices = csr
  begin = indptr[rows]
  lengths = indptr[rows + 1] - begin
  new_indptr = np.zeros(len(rows) + 1, np.int64)
  np.cumsum(lengths, out=new_indptr[1:])
  # Offset of each entry inside its row's run, plus the run's start.
  within = np.arange(new_indptr[-1]) - np.repeat(new_indptr[:-1], lengths)
  return new_indptr, indices[np.repeat(begin, lengths) + within]


def csr_entries(
  csr: Csr, query_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """(position in `query_rows`, item) of every CSR entry of those rows.

  The coordinate form a scatter into a [len(query_rows), N] score block
  needs.
  """
  indptr, cols = select_csr_rows(csr, query_rows)
  rows = np.repeat(np.arange(query_rows.shape[0]), np.diff(indptr))
  return rows, cols


def exclusion_without_targets(
  exclude: Csr,
  pairs_query: np.ndarray,
  pairs_item: np.ndarray,
) -> tuple[Csr, int]:
  """The exclusion CSR minus each query's own held-out items.

  A held-out item stays scoreable for its query even when the query also
  saw it earlier: excluding it would make the pair an automatic miss that
  says nothing about the model. Every ranking path (exact search, the
  index, the most-popular baseline) applies this before excluding.

  Args:
    exclude: CSR (indptr [Q + 1], indices [nnz]) of excluded corpus rows
      per query row.
    pairs_query: int [P], query row of each held-out pair.
    pairs_item: int [P], corpus row of each held-out item.

  Returns:
    ((indptr int64 [Q + 1], indices [nnz']), number of pairs whose item was
    in its query's exclusion list).

  Example:
    >>> exclusion_without_targets(
    ...   (np.array([0, 2, 3]), np.array([4, 7, 7])), [0, 1], [7, 5])
    ((array([0, 1, 2]), array([4, 7])), 1)
  """
  indptr = np.asarray(exclude[0]).astype(np.int64, copy=False)
  indices = np.asarray(exclude[1])
  num_queries = indptr.shape[0] - 1
  excluded_keys, pair_keys = _keys(exclude, pairs_query, pairs_item)
  rows = np.repeat(np.arange(num_queries, dtype=np.int64), np.diff(indptr))
  is_target = _is_in(excluded_keys, pair_keys)
  target_excluded = int(_is_in(pair_keys, excluded_keys).sum())
  new_indptr = np.zeros(num_queries + 1, np.int64)
  np.cumsum(
    np.bincount(rows[~is_target], minlength=num_queries), out=new_indptr[1:]
  )
  return (new_indptr, indices[~is_target]), target_excluded


def contains(
  csr: Csr, pairs_query: np.ndarray, pairs_item: np.ndarray
) -> np.ndarray:
  """bool [P]: whether each pair's item is in its query's CSR row.

  Example:
    >>> contains((np.array([0, 2, 3]), np.array([4, 7, 7])), [0, 1], [7, 5])
    array([ True, False])
  """
  entry_keys, pair_keys = _keys(csr, pairs_query, pairs_item)
  return _is_in(pair_keys, entry_keys)


def from_entries(rows: np.ndarray, cols: np.ndarray, num_rows: int) -> Csr:
  """The CSR of (row, col) entries: each row's distinct cols, ascending.

  Args:
    rows: int [E], row of each entry, in [0, num_rows).
    cols: int [E], non-negative column of each entry.
    num_rows: Rows of the result.

  Returns:
    (indptr int64 [num_rows + 1], indices int32 [nnz]).
  """
  rows = np.asarray(rows).astype(np.int64, copy=False)
  cols = np.asarray(cols).astype(np.int64, copy=False)
  width = max(int(cols.max(initial=-1)) + 1, 1)
  codes = sorted_distinct(rows * width + cols)
  indptr = np.zeros(num_rows + 1, np.int64)
  np.cumsum(np.bincount(codes // width, minlength=num_rows), out=indptr[1:])
  return indptr, (codes % width).astype(np.int32)


def _keys(
  csr: Csr, pairs_query: np.ndarray, pairs_item: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """One int64 key per CSR entry and per pair, row * width + column."""
  indptr = np.asarray(csr[0]).astype(np.int64, copy=False)
  indices = np.asarray(csr[1]).astype(np.int64, copy=False)
  pairs_query = np.asarray(pairs_query).astype(np.int64, copy=False)
  pairs_item = np.asarray(pairs_item).astype(np.int64, copy=False)
  width = int(max(indices.max(initial=-1), pairs_item.max(initial=-1))) + 1
  rows = np.repeat(
    np.arange(indptr.shape[0] - 1, dtype=np.int64), np.diff(indptr)
  )
  return rows * width + indices, pairs_query * width + pairs_item


def sorted_distinct(values: np.ndarray) -> np.ndarray:
  """np.unique of a 1-D integer array, by sorting (see the module docstring)."""
  values = np.sort(values)
  if values.size < 2:
    return values
  return values[np.concatenate([[True], values[1:] != values[:-1]])]


def _is_in(values: np.ndarray, universe: np.ndarray) -> np.ndarray:
  """np.isin of integer keys, by sorting (see the module docstring)."""
  universe = np.sort(universe)
  if universe.size == 0:
    return np.zeros(values.shape, bool)
  at = np.minimum(np.searchsorted(universe, values), universe.size - 1)
  return universe[at] == values
