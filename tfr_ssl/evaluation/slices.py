"""Popularity slices of the corpus: head, tail, cold, and deciles.

The one definition of "popular" that every evaluation reports by (exact
search, the index, the most-popular baseline) and the figure draws. It lives
apart from the metrics because it is a property of the training counts, not
of any ranking: the same items are head for every model compared.

Conventions:
  * Slices are defined on the items seen in training (count > 0), so that
    they do not move with the share of the corpus that happens to be cold:
    `head` = the `head_fraction` most frequent of the seen items (ties to
    the lower row), `tail` = the other seen items, `cold` = items never
    seen in training.
  * Deciles are over the whole corpus: all items sorted by count ascending
    (ties to the lower row) into 10 equal-size groups, decile 0 holding the
    rarest (cold items first), decile 9 the most frequent.
"""

from __future__ import annotations

import math

import numpy as np

from tfr_ssl import config as config_lib

NUM_DECILES = 10
SLICES = ("head", "tail", "cold")


def item_slices(
  item_train_count: np.ndarray, head_fraction: float = 0.1
) -> dict[str, np.ndarray]:
  """Assigns every item to head / tail / cold and to a popularity decile.

  Head and tail split the items seen in training (count > 0): the head is
  the `round(head_fraction * seen)` most frequent of them (halves round up,
  ties to the lower row), so its size does not depend on how many corpus
  rows are cold. Deciles are over the whole corpus (see the module
  docstring).

  Args:
    item_train_count: int [N], training occurrences of each corpus row.
    head_fraction: Share of the seen items called head.

  Returns:
    `head`, `tail`, `cold`: bool [N] masks that partition the corpus;
    `decile`: int32 [N] in 0..9 (0 = rarest).

  Raises:
    ValueError: `head_fraction` outside [0, 1].

  Example:
    Eight of the ten items are seen; 0.25 * 8 = 2 head items, the counts 9
    (row 2) and 7 (row 9). (Over the whole corpus it would be 2.5.)

    >>> item_slices(np.array([5, 0, 9, 1, 1, 0, 2, 3, 4, 7]), 0.25)["head"]
    array([False, False,  True, False, False, False, False, False, False,
            True])
  """
  # Signed, so that -count sorts the most frequent first.
  count = np.asarray(item_train_count).astype(np.int64)
  n = count.shape[0]
  config_lib.check_value("eval.head_fraction", head_fraction)
  rows = np.arange(n)
  cold = count == 0
  num_seen = int(n - cold.sum())
  # lexsort sorts by its last key first; rows break ties deterministically.
  # Seen items come first, so the head is drawn from them only.
  most_frequent_first = np.lexsort((rows, -count))
  head = np.zeros(n, bool)
  head[most_frequent_first[: _head_size(head_fraction, num_seen)]] = True
  rank = np.empty(n, np.int64)
  rank[np.lexsort((rows, count))] = rows
  return {
    "head": head,
    "tail": ~head & ~cold,
    "cold": cold,
    "decile": (rank * NUM_DECILES // max(n, 1)).astype(np.int32),
  }


def _head_size(head_fraction: float, num_seen: int) -> int:
  """round(head_fraction * num_seen), halves up, within [0, num_seen]."""
  # The small epsilon keeps products like 0.1 * 25 (= 2.5000000000000004 or
  # 2.4999999999999996) rounding the same way as the exact value.
  size = math.floor(head_fraction * num_seen + 0.5 + 1e-9)
  return min(max(size, 0), num_seen)
