"""Tests of held-out users: taken out of every split, folded in at test time."""

import numpy as np
import pytest
import tensorflow as tf

from tfr_ssl import config as config_lib
from tfr_ssl.data import contract, heldout, stats
from tfr_ssl.evaluation import embed

P = contract.PAD
NUM_ITEMS = 15
# Interactions per user: u0..u5. Candidates (>= 5): u0, u1, u2, u5.
COUNTS = (10, 6, 5, 4, 2, 7)
CANDIDATES = {0, 1, 2, 5}


def _schema() -> contract.Schema:
  return contract.Schema(
    features=(
      contract.Feature("user_id", contract.CATEGORICAL, contract.QUERY),
      contract.Feature("item_id", contract.CATEGORICAL, contract.ITEM),
    ),
    item_id="item_id",
    query_id="user_id",
  )


def _split(query, item, time):
  n = len(query)
  return contract.Interactions(
    query_index=np.array(query, np.int32),
    item_index=np.array(item, np.int32),
    weight=np.arange(n, dtype=np.float32),  # tells rows apart
    timestamp=None if time is None else np.array(time, np.int64),
    prev_item_index=np.full(n, P, np.int32),
  )


def _prepared(splits, num_users) -> contract.PreparedDataset:
  train = splits["train"]
  return contract.PreparedDataset(
    schema=_schema(),
    vocabularies={
      "user_id": [f"u{u}" for u in range(num_users)],
      "item_id": [f"i{i}" for i in range(NUM_ITEMS)],
    },
    items={"item_id": np.arange(1, NUM_ITEMS + 1, dtype=np.int32)},
    queries={"user_id": np.arange(1, num_users + 1, dtype=np.int32)},
    splits=splits,
    item_train_count=stats.item_train_count(train.item_index, NUM_ITEMS),
    train_items_by_query=stats.items_by_query(
      train.query_index, train.item_index, num_users
    ),
  )


def six_users(timestamps: bool = True) -> contract.PreparedDataset:
  """User u's k-th interaction (k = 0..COUNTS[u]-1): item (3u + k) % 15 at
  time k, in validation when k % 5 == 3, in test when k % 5 == 4, else in
  training; the file interleaves the users (k-th of every user, then the
  (k+1)-th)."""
  rows = {name: ([], [], []) for name in contract.SPLITS}
  for k in range(max(COUNTS)):
    for user, count in enumerate(COUNTS):
      if k < count:
        name = {3: "validation", 4: "test"}.get(k % 5, "train")
        for column, value in zip(
          rows[name], (user, (3 * user + k) % NUM_ITEMS, k), strict=True
        ):
          column.append(value)
  splits = {
    name: _split(q, i, t if timestamps else None)
    for name, (q, i, t) in rows.items()
  }
  return _prepared(splits, len(COUNTS))


def _triples(split, users):
  """(user, item, time, weight) of the rows of `users`, in row order; time
  None without timestamps."""
  keep = np.isin(split.query_index, list(users))
  times = (
    [None] * int(keep.sum())
    if split.timestamp is None
    else split.timestamp[keep].tolist()
  )
  return list(
    zip(
      split.query_index[keep].tolist(),
      split.item_index[keep].tolist(),
      times,
      split.weight[keep].tolist(),
      strict=True,
    )
  )


def test_held_out_users_leave_every_split():
  prepared = six_users()
  out = heldout.hold_out_users(prepared, 0.5, seed=0)
  chosen = set(np.unique(out.splits["heldout"].query_index).tolist())
  # round(0.5 * 4 candidates) = 2 users, candidates only.
  assert len(chosen) == 2 and chosen <= CANDIDATES
  for name in contract.SPLITS:
    assert not np.isin(out.splits[name].query_index, list(chosen)).any()
  # Every row of theirs moved, train then validation then test.
  moved = out.splits["heldout"]
  assert len(moved) == sum(COUNTS[u] for u in chosen)
  expected = [
    row
    for name in contract.SPLITS
    for row in _triples(prepared.splits[name], chosen)
  ]
  assert _triples(moved, chosen) == expected
  # The input is not modified.
  assert "heldout" not in prepared.splits
  everyone = set(range(len(COUNTS)))
  for name in contract.SPLITS:
    assert _triples(prepared.splits[name], everyone) == _triples(
      six_users().splits[name], everyone
    )


def test_training_counts_and_lists_no_longer_count_held_out_users():
  prepared = six_users()
  out = heldout.hold_out_users(prepared, 0.5, seed=0)
  chosen = np.unique(out.splits["heldout"].query_index)
  kept_train = prepared.splits["train"]
  kept_train = kept_train.item_index[~np.isin(kept_train.query_index, chosen)]
  np.testing.assert_array_equal(
    out.item_train_count, np.bincount(kept_train, minlength=NUM_ITEMS)
  )
  # The chosen users trained on something, so the counts went down.
  assert out.item_train_count.sum() < prepared.item_train_count.sum()
  indptr, indices = out.train_items_by_query
  old_indptr, old_indices = prepared.train_items_by_query
  for user in range(len(COUNTS)):
    got = indices[indptr[user] : indptr[user + 1]]
    if user in chosen:
      assert got.size == 0
    else:
      old = old_indices[old_indptr[user] : old_indptr[user + 1]]
      np.testing.assert_array_equal(got, old)
      assert got.size > 0


def test_the_choice_is_seeded_and_leaves_the_other_users_alone():
  prepared = six_users()
  first = heldout.hold_out_users(prepared, 0.5, seed=4)
  again = heldout.hold_out_users(prepared, 0.5, seed=4)
  chosen = np.unique(first.splits["heldout"].query_index)
  np.testing.assert_array_equal(
    np.unique(again.splits["heldout"].query_index), chosen
  )
  others = set(range(len(COUNTS))) - set(chosen.tolist())
  for name in contract.SPLITS:
    # The other users' rows, in order, fields and all.
    assert _triples(first.splits[name], others) == _triples(
      prepared.splits[name], others
    )
    assert len(first.splits[name]) == len(
      _triples(prepared.splits[name], others)
    )
  # Over seeds: never a user with fewer than 5 interactions, and the seed
  # matters (6 possible pairs).
  picks = set()
  for seed in range(20):
    out = heldout.hold_out_users(prepared, 0.5, seed)
    users = frozenset(np.unique(out.splits["heldout"].query_index).tolist())
    assert users <= CANDIDATES
    picks.add(users)
  assert len(picks) > 1


def test_no_share_is_the_same_dataset_and_twice_is_refused():
  prepared = six_users()
  assert heldout.hold_out_users(prepared, 0.0, seed=0) is prepared
  # round(0.1 * 4) = 0 users.
  assert heldout.hold_out_users(prepared, 0.1, seed=0) is prepared
  assert heldout.fold_in(prepared, 3) is None
  out = heldout.hold_out_users(prepared, 0.5, seed=0)
  with pytest.raises(ValueError, match="already"):
    heldout.hold_out_users(out, 0.5, seed=0)


def fold_dataset() -> contract.PreparedDataset:
  """u0 and u2 held out, u1 trains.

  u0: 10 interactions, by time t = 0..9 the items i0..i7, i9, i9, stored in
  a shuffled file order; u2: 5 interactions i10..i14 at t = 0..4. u1 trains
  on i8, i8, i9, i14 (most popular: i8, then i9 and i14, then the rest).
  """
  u0_time = np.array([3, 9, 0, 5, 1, 8, 2, 7, 4, 6])
  u0_item = np.array([0, 1, 2, 3, 4, 5, 6, 7, 9, 9])[u0_time]
  held = _split(
    [0] * 10 + [2] * 5,
    np.concatenate([u0_item, [10, 11, 12, 13, 14]]),
    np.concatenate([u0_time, [0, 1, 2, 3, 4]]),
  )
  splits = {
    "train": _split([1, 1, 1, 1], [8, 8, 9, 14], [0, 1, 2, 3]),
    "validation": _split([1], [3], [4]),
    "test": _split([1], [4], [5]),
    "heldout": held,
  }
  return _prepared(splits, 3)


def test_fold_in_folds_the_first_80_percent_and_scores_the_rest():
  fold = heldout.fold_in(fold_dataset(), 3)
  np.testing.assert_array_equal(fold.queries, [0, 2])
  # u0: floor(0.8 * 10) = 8 folded in (i0..i7), 2 scored (i9 twice: one
  # pair); u2: floor(0.8 * 5) = 4 folded in (i10..i13), i14 scored.
  np.testing.assert_array_equal(fold.histories, [[7, 6, 5], [13, 12, 11]])
  np.testing.assert_array_equal(fold.query_of_pair, [0, 1])
  np.testing.assert_array_equal(fold.targets, [9, 14])
  indptr, indices = fold.excluded_items
  np.testing.assert_array_equal(indptr, [0, 8, 12])
  np.testing.assert_array_equal(
    indices, [0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13]
  )
  assert fold.folded_in == 12
  # Longer than the folded-in part: padded.
  long = heldout.fold_in(fold_dataset(), 10).histories
  np.testing.assert_array_equal(
    long,
    [[7, 6, 5, 4, 3, 2, 1, 0, P, P], [13, 12, 11, 10, P, P, P, P, P, P]],
  )


def test_validation_folds_in_60_percent_and_scores_up_to_the_test_fold():
  fold = heldout.fold_in(fold_dataset(), 3, split="validation")
  np.testing.assert_array_equal(fold.queries, [0, 2])
  # u0 (i0..i7, i9, i9 by time): 3 * 10 // 5 = 6 folded in (i0..i5), then
  # i6 and i7 scored, up to the test fold-in point 8; test's i9 is not
  # read. u2 (i10..i14): 3 folded in (i10..i12), i13 scored (test folds in
  # 4 and scores i14).
  np.testing.assert_array_equal(fold.histories, [[5, 4, 3], [12, 11, 10]])
  np.testing.assert_array_equal(fold.query_of_pair, [0, 0, 1])
  np.testing.assert_array_equal(fold.targets, [6, 7, 13])
  indptr, indices = fold.excluded_items
  np.testing.assert_array_equal(indptr, [0, 6, 9])
  np.testing.assert_array_equal(indices, [0, 1, 2, 3, 4, 5, 10, 11, 12])
  assert fold.folded_in == 9
  # Every validation item lies before the test fold-in point: it is in
  # test's folded-in history, never among test's scored items.
  test = heldout.fold_in(fold_dataset(), 10)
  for index in range(2):
    scored = fold.targets[fold.query_of_pair == index]
    start, stop = test.excluded_items[0][index : index + 2]
    assert set(scored) <= set(test.excluded_items[1][start:stop])
    assert not set(scored) & set(test.targets[test.query_of_pair == index])
  with pytest.raises(ValueError, match="train"):
    heldout.fold_in(fold_dataset(), 3, split="train")


def test_without_timestamps_fold_in_reads_train_then_validation_then_test():
  prepared = six_users(timestamps=False)
  out = heldout.hold_out_users(prepared, 0.5, seed=0)
  fold = heldout.fold_in(out, 10)
  for index, user in enumerate(fold.queries):
    # The user's items in "before" order: its training rows in file
    # order, then its validation ones, then its test ones.
    items = [
      item
      for name in contract.SPLITS
      for _, item, _, _ in _triples(prepared.splits[name], {int(user)})
    ]
    folded = int(np.floor(0.8 * len(items)))
    history = fold.histories[index]
    np.testing.assert_array_equal(
      history[history != P], items[:folded][::-1][:10]
    )
    got = fold.excluded_items[1][
      fold.excluded_items[0][index] : fold.excluded_items[0][index + 1]
    ]
    np.testing.assert_array_equal(got, sorted(set(items[:folded])))
    np.testing.assert_array_equal(
      fold.targets[fold.query_of_pair == index], sorted(set(items[folded:]))
    )


def test_evaluate_heldout_scores_the_fold_beside_most_popular():
  prepared = fold_dataset()
  # Item embedding: its row. A query whose latest history item is i7 (u0)
  # is [1] and ranks items by row, highest first; any other is [-1] and
  # ranks them lowest first. The folded-in items are excluded.
  items = np.arange(NUM_ITEMS, dtype=np.float32)[:, None]

  def query_tower(features):
    latest = features["history"][:, 0]
    return tf.where(latest == 7, 1.0, -1.0)[:, None]

  eval_config = config_lib.EvalConfig(ks=(2, 6, 11))
  metrics = embed.evaluate_heldout(
    query_tower, items, prepared, eval_config, history_length=3
  )
  # u0 ranks i14, i13, ..., i10, i9 (i0..i7 excluded): i9 at position 5.
  # u2 ranks i0, ..., i9, i14 (i10..i13 excluded): i14 at position 10.
  assert metrics["num_users"] == 2 and metrics["folded_in"] == 12
  assert metrics["num_pairs"] == 2
  assert metrics["recall@2"] == 0.0
  assert metrics["recall@6"] == 0.5
  assert metrics["recall@11"] == 1.0
  # Most popular (training counts i8: 2, i9: 1, i14: 1), the same pairs:
  # u0 ranks i8, i9 (position 1); u2 ranks i8, i9, i14 (position 2).
  popular = metrics["most_popular"]
  assert popular["num_pairs"] == 2
  assert popular["recall@2"] == 0.5
  assert popular["recall@6"] == 1.0
  # Validation: u0 folds in i0..i5 (latest i5: ranks lowest row first,
  # i6 at position 1 and i7 at 2); u2 folds in i10..i12 and ranks i0..i9
  # then i13 at position 11. Recall@2: 2 of the 3 pairs.
  held = embed.evaluate_heldout(
    query_tower, items, prepared, eval_config, 3, split="validation"
  )
  assert held["num_pairs"] == 3 and held["folded_in"] == 9
  assert held["recall@2"] == pytest.approx(2 / 3)
  assert held["recall@6"] == pytest.approx(2 / 3)
  assert held["recall@11"] == 1.0
  assert heldout.fold_in(prepared, 3) is not None
  without = dict(prepared.splits)
  del without["heldout"]
  bare = _prepared(without, 3)
  assert (
    embed.evaluate_heldout(query_tower, items, bare, eval_config, 3) is None
  )
