"""Tests of interaction histories: what a user had done before, and no more.

The data is built so that a leak changes a number: a validation item whose
timestamp lies between two training items (a training history built over
more than the training split would hold it), a test item older than every
other interaction (a history reading the test split would hold it), ties
in time inside the training split and across splits (the order's tie
rules decide which item comes first), and, through the real split path,
training rows dropped by `data.train_fraction`. The evaluation's user
slices (by training activity) are checked here too, on the same data.
"""

import numpy as np
import pytest
import tensorflow as tf

from tfr_ssl import data
from tfr_ssl.config import DataConfig, EvalConfig
from tfr_ssl.data import contract, history, stats
from tfr_ssl.data.assemble import build_prepared
from tfr_ssl.data.raw import RawData, RawInteractions, RawTable
from tfr_ssl.evaluation import embed
from tfr_ssl.evaluation import metrics as evaluate

P = contract.PAD
NUM_ITEMS = 8


def _split(query, item, time):
  n = len(query)
  return contract.Interactions(
    query_index=np.array(query, np.int32),
    item_index=np.array(item, np.int32),
    weight=np.ones(n, np.float32),
    timestamp=None if time is None else np.array(time, np.int64),
    prev_item_index=np.full(n, P, np.int32),
  )


def leak_dataset(timestamps: bool = True) -> contract.PreparedDataset:
  """Users u0, u1, u2; items i0..i7 (corpus rows 0..7).

  Rows (user, item, time), in file order:
    train:      r0 (u0, i0, 5), r1 (u0, i1, 1), r2 (u1, i2, 3),
                r3 (u0, i2, 5), r4 (u0, i3, 3), r5 (u1, i4, 3)
    validation: (u0, i6, 2), (u1, i5, 3), (u2, i1, 1)
    test:       (u0, i7, 0), (u1, i6, 10), (u2, i3, 0)
  u0's validation i6 (time 2) falls between its training i1 (1) and i3
  (3); u0's test i7 (time 0) is older than everything; r0 and r3 tie at
  time 5 (file order: r0 first); u1's validation i5 ties with its training
  rows at time 3 (split order: training first). u2 has no training row.
  `timestamps=False` drops every time column (file order only).
  """
  schema = contract.Schema(
    features=(
      contract.Feature("user_id", contract.CATEGORICAL, contract.QUERY),
      contract.Feature("item_id", contract.CATEGORICAL, contract.ITEM),
    ),
    item_id="item_id",
    query_id="user_id",
  )

  def times(values):
    return values if timestamps else None

  train = _split(
    [0, 0, 1, 0, 0, 1], [0, 1, 2, 2, 3, 4], times([5, 1, 3, 5, 3, 3])
  )
  return contract.PreparedDataset(
    schema=schema,
    vocabularies={
      "user_id": ["u0", "u1", "u2"],
      "item_id": [f"i{i}" for i in range(NUM_ITEMS)],
    },
    items={"item_id": np.arange(1, NUM_ITEMS + 1, dtype=np.int32)},
    queries={"user_id": np.arange(1, 4, dtype=np.int32)},
    splits={
      "train": train,
      "validation": _split([0, 1, 2], [6, 5, 1], times([2, 3, 1])),
      "test": _split([0, 1, 2], [7, 6, 3], times([0, 10, 0])),
    },
    item_train_count=np.bincount(train.item_index, minlength=NUM_ITEMS),
    train_items_by_query=stats.items_by_query(
      train.query_index, train.item_index, 3
    ),
  )


# Training histories (N = 3, latest first) with timestamps. u0's training
# order is r1 (i1, t1), r4 (i3, t3), r0 (i0, t5), r3 (i2, t5, after r0 by
# file order); u1's is r2 (i2), r5 (i4) (tie at t3, file order).
TRAIN_TIMED = [
  [3, 1, P],  # r0: r4, r1 (not r3: same time, later in the file)
  [P, P, P],  # r1: u0's oldest
  [P, P, P],  # r2: u1's first
  [0, 3, 1],  # r3: r0, r4, r1
  [1, P, P],  # r4: r1 (u0's validation i6 at t2 would come first)
  [2, P, P],  # r5: r2
]
# Without timestamps: file order. u0: r0 (i0), r1 (i1), r3 (i2), r4 (i3).
TRAIN_UNTIMED = [
  [P, P, P],  # r0
  [0, P, P],  # r1
  [P, P, P],  # r2
  [1, 0, P],  # r3
  [2, 1, 0],  # r4
  [2, P, P],  # r5
]


@pytest.mark.parametrize(
  "timestamps, expected", [(True, TRAIN_TIMED), (False, TRAIN_UNTIMED)]
)
def test_training_histories_hold_exactly_the_earlier_training_items(
  timestamps, expected
):
  prepared = leak_dataset(timestamps)
  train = history.training_histories(prepared)
  rows = train.rows(np.arange(6), 3)
  np.testing.assert_array_equal(rows, expected)
  # Never a validation or test item: i5, i6 and i7 are only there.
  assert not np.isin(rows, [5, 6, 7]).any()


@pytest.mark.parametrize(
  "timestamps, expected", [(True, TRAIN_TIMED), (False, TRAIN_UNTIMED)]
)
def test_the_training_stream_gathers_the_same_histories(timestamps, expected):
  prepared = leak_dataset(timestamps)
  # In file order: one batch of every training row.
  stream = data.main_dataset(
    prepared,
    "train",
    6,
    shuffle=False,
    drop_remainder=False,
    history_length=3,
  )
  (batch,) = list(stream)
  np.testing.assert_array_equal(batch["query"]["history"], expected)
  # Shuffled, each history still follows its row.
  stream = data.main_dataset(prepared, "train", 3, seed=5, history_length=3)
  _assert_stream_histories(prepared, stream, expected)


# Evaluation histories (N = 5). Validation reads training items only; test
# reads training and validation, in the one "before" order:
#   u0 test, timed: i1 (t1), i6 (val, t2), i3 (t3), i0 (t5), i2 (t5).
#   u1 test, timed: i2, i4 (train, t3), then i5 (validation, t3: later split).
#   u2: nothing trained; its test history is its validation i1.
VALIDATION_TIMED = [[2, 0, 3, 1, P], [4, 2, P, P, P], [P, P, P, P, P]]
TEST_TIMED = [[2, 0, 3, 6, 1], [5, 4, 2, P, P], [1, P, P, P, P]]
# Untimed: file order in a split, and validation after every training row.
VALIDATION_UNTIMED = [[3, 2, 1, 0, P], [4, 2, P, P, P], [P, P, P, P, P]]
TEST_UNTIMED = [[6, 3, 2, 1, 0], [5, 4, 2, P, P], [1, P, P, P, P]]


@pytest.mark.parametrize(
  "timestamps, validation, test",
  [
    (True, VALIDATION_TIMED, TEST_TIMED),
    (False, VALIDATION_UNTIMED, TEST_UNTIMED),
  ],
)
def test_evaluation_histories_read_the_earlier_splits_only(
  timestamps, validation, test
):
  prepared = leak_dataset(timestamps)
  got_validation = history.evaluation_histories(prepared, "validation", 5)
  got_test = history.evaluation_histories(prepared, "test", 5)
  np.testing.assert_array_equal(got_validation, validation)
  np.testing.assert_array_equal(got_test, test)
  # No test item anywhere (i7 is u0's oldest interaction of all, and u2's
  # test i3 is older than its validation i1: either would be in a history
  # built over the test split); validation items only in test histories.
  assert not np.isin(got_validation, [5, 6, 7]).any()
  assert not (got_test == 7).any() and 3 not in got_test[2]
  # The stream of a split gives each row its user's history.
  for split, expected in (("validation", validation), ("test", test)):
    stream = data.main_dataset(
      prepared,
      split,
      3,
      shuffle=False,
      drop_remainder=False,
      history_length=5,
    )
    (batch,) = list(stream)
    np.testing.assert_array_equal(batch["query"]["history"], expected)


def test_the_query_table_adds_histories_for_user_queries_only():
  prepared = leak_dataset()
  table = history.query_table(prepared, "user_to_item", "test", 5)
  np.testing.assert_array_equal(table["history"], TEST_TIMED)
  np.testing.assert_array_equal(table["user_id"], [1, 2, 3])
  assert "history" not in history.query_table(
    prepared, "user_to_item", "test", 0
  )
  assert "history" not in history.query_table(
    prepared, "item_to_item", "test", 5
  )
  with pytest.raises(ValueError, match="'train'"):
    history.evaluation_histories(prepared, "train", 5)


def test_sequences_order_by_time_then_split_then_file():
  prepared = leak_dataset()
  seq = history.sequences(prepared, ("train", "validation"))
  np.testing.assert_array_equal(seq.lengths(), [5, 3, 1])
  # u0: i1 (t1), i6 (t2), i3 (t3), i0 (t5, r0), i2 (t5, r3); u1: i2, i4,
  # i5 (t3 all: training in file order, then validation); u2: i1.
  np.testing.assert_array_equal(seq.items, [1, 6, 3, 0, 2, 2, 4, 5, 1])
  # source: rows of train (0..5) then validation (6..8).
  np.testing.assert_array_equal(seq.source, [1, 6, 4, 0, 3, 2, 5, 7, 8])
  np.testing.assert_array_equal(
    history.latest_items(seq, 2), [[2, 0], [5, 4], [1, P]]
  )


def test_the_user_ssl_stream_samples_users_with_two_training_items():
  prepared = leak_dataset()
  stream = data.train_dataset(
    prepared,
    batch_size=2,
    ssl_batch_size=2,
    history_length=2,
    user_ssl=True,
    repeat=True,
  )
  # Each user's latest 2 N = 4 training items: u0 i2, i0, i3, i1; u1 i4,
  # i2. u2 has no training item and is never drawn.
  latest = {0: [2, 0, 3, 1], 1: [4, 2, P, P]}
  drawn = []
  for batch in stream.take(6):
    users = batch["ssl_user_index"].numpy()
    np.testing.assert_array_equal(batch["ssl_user"]["user_id"], users + 1)
    for user, rows in zip(
      users, batch["ssl_user"]["history"].numpy(), strict=True
    ):
      np.testing.assert_array_equal(rows, latest[int(user)])
    drawn.extend(users.tolist())
  # Uniform over users: every epoch of 2 users is one batch of both.
  assert sorted(drawn) == [0] * 6 + [1] * 6


def test_user_activity_splits_users_by_training_interactions():
  prepared = leak_dataset()
  # Training interactions: u0 4, u1 2, u2 0.
  masks = history.user_activity(prepared, np.array([0, 1, 2, 0]), 2)
  np.testing.assert_array_equal(masks["sparse"], [False, True, True, False])
  np.testing.assert_array_equal(masks["active"], ~masks["sparse"])


def _raw(num_users: int, per_user: int) -> RawData:
  """Every interaction a distinct item, so an item names its row; user u's
  k-th interaction has time k, and the file interleaves the users."""
  schema = contract.Schema(
    features=(
      contract.Feature("user_id", contract.CATEGORICAL, contract.QUERY),
      contract.Feature("item_id", contract.CATEGORICAL, contract.ITEM),
    ),
    item_id="item_id",
    query_id="user_id",
  )
  n = num_users * per_user
  users = np.tile(np.arange(num_users), per_user)
  return RawData(
    schema=schema,
    items=RawTable(
      path="items.csv",
      columns={"item_id": np.array([f"i{i}" for i in range(n)])},
    ),
    queries=None,
    interactions=RawInteractions(
      path="interactions.csv",
      query_key=np.array([f"u{u}" for u in users]),
      item_key=np.array([f"i{i}" for i in range(n)]),
      weight=None,
      timestamp=np.repeat(np.arange(per_user), num_users).astype(np.int64),
      lines=None,
      query_column="user_id",
      item_column="item_id",
    ),
  )


def _brute_force_histories(split: contract.Interactions, length: int):
  """Each row's history by definition: the same user's rows of `split`
  with a smaller (time, file position), latest first."""
  out = np.full((len(split), length), P, np.int32)
  for r in range(len(split)):
    earlier = [
      (int(split.timestamp[s]), s)
      for s in range(len(split))
      if split.query_index[s] == split.query_index[r]
      and (split.timestamp[s], s) < (split.timestamp[r], r)
    ]
    latest = [split.item_index[s] for _, s in sorted(earlier)[::-1]][:length]
    out[r, : len(latest)] = latest
  return out


def test_training_rows_dropped_by_train_fraction_are_in_no_history():
  raw = _raw(num_users=3, per_user=12)
  config = dict(
    source="csv", validation_fraction=0.1, test_fraction=0.1, seed=3
  )
  full = build_prepared(raw, DataConfig(**config, train_fraction=1.0))
  half = build_prepared(raw, DataConfig(**config, train_fraction=0.5))
  # The same split, training rows subsampled: the dropped rows' items.
  dropped = np.setdiff1d(
    full.splits["train"].item_index, half.splits["train"].item_index
  )
  assert dropped.size == len(full.splits["train"]) - len(half.splits["train"])
  assert dropped.size > 5
  length = 12
  train = half.splits["train"]
  got = history.training_histories(half).rows(np.arange(len(train)), length)
  np.testing.assert_array_equal(got, _brute_force_histories(train, length))
  assert not np.isin(got, dropped).any()
  (batch,) = list(
    data.main_dataset(
      half,
      "train",
      len(train),
      shuffle=False,
      drop_remainder=False,
      history_length=length,
    )
  )
  np.testing.assert_array_equal(batch["query"]["history"], got)
  # The drop is visible: over the full training split some of the same
  # rows' histories hold dropped items.
  full_train = full.splits["train"]
  full_rows = history.training_histories(full).rows(
    np.arange(len(full_train)), length
  )
  assert np.isin(full_rows, dropped).any()
  # Validation and test histories read the kept training rows only too.
  for split in ("validation", "test"):
    assert not np.isin(
      history.evaluation_histories(half, split, length), dropped
    ).any()


def test_pair_slices_report_recall_of_each_subset_of_pairs():
  # Items embed [3], [2], [1], [0]; queries q0 = [1] and q2 = [1] rank
  # i0, i1, i2, i3, q1 = [-1] ranks i3, i2, i1, i0. Positions: (q0, i0) 0,
  # (q0, i2) 2, (q1, i3) 0, (q1, i0) 3, (q2, i1) 1.
  items = np.array([[3.0], [2.0], [1.0], [0.0]])
  queries = np.array([[1.0], [-1.0], [1.0]])
  pairs_query = np.array([0, 0, 1, 1, 2])
  sparse = pairs_query == 0
  metrics = evaluate.evaluate_embeddings(
    queries,
    items,
    pairs_query,
    np.array([0, 2, 3, 0, 1]),
    ks=(1, 3),
    pair_slices={"sparse": sparse, "active": ~sparse},
  )
  # Overall: hits@1 (q0, i0), (q1, i3); hits@3 also (q0, i2), (q2, i1).
  assert metrics["recall@1"] == pytest.approx(2 / 5)
  assert metrics["recall@3"] == pytest.approx(4 / 5)
  assert metrics["user_slices"] == {
    "sparse": {
      "num_pairs": 2,
      "num_queries": 1,
      "recall@1": pytest.approx(1 / 2),
      "recall@3": pytest.approx(1.0),
    },
    "active": {
      "num_pairs": 3,
      "num_queries": 2,
      "recall@1": pytest.approx(1 / 3),
      "recall@3": pytest.approx(2 / 3),
    },
  }
  with pytest.raises(evaluate.EvaluationInputError, match="'sparse'"):
    evaluate.evaluate_embeddings(
      queries,
      items,
      pairs_query,
      np.array([0, 2, 3, 0, 1]),
      ks=(1, 3),
      pair_slices={"sparse": sparse[:2]},
    )


def test_evaluate_model_reads_test_histories_and_slices_users():
  prepared = leak_dataset()
  # The query is the one-hot of the latest history item; item j is the
  # one-hot of g(j) with g = identity except g(i7) = 2, g(i6) = 5,
  # g(i3) = 1. With the test histories (latest: u0 i2, u1 i5, u2 i1) each
  # user's test item is the only item of score 1 that is not excluded
  # (u0's i2 is a training item, u1's i5 and u2's i1 validation items):
  # recall@1 = 1. With any other history (the validation ones: u1 i4, u2
  # none) some user misses.
  g = np.array([0, 1, 2, 1, 4, 5, 5, 2])

  def item_tower(features):
    return tf.one_hot(tf.gather(g, features["item_id"] - 1), NUM_ITEMS)

  def query_tower(features):
    return tf.one_hot(features["history"][:, 0], NUM_ITEMS)

  eval_config = EvalConfig(ks=(1, 2), sparse_user_max=2)
  metrics = embed.evaluate_model(
    query_tower, item_tower, prepared, "test", eval_config, history_length=5
  )
  assert metrics["num_pairs"] == 3
  assert metrics["recall@1"] == 1.0
  # Training interactions: u0 4 (active), u1 2 and u2 0 (sparse, <= 2).
  slices = metrics["user_slices"]
  assert slices["sparse"]["num_pairs"] == 2
  assert slices["active"]["num_pairs"] == 1
  assert (
    slices["sparse"]["num_pairs"] + slices["active"]["num_pairs"]
    == metrics["num_pairs"]
  )
  assert slices["sparse"]["num_queries"] == 2
  # The validation split reads training histories (latest: u0 i2, u1 i4,
  # u2 none) and misses every target at rank 1: u0's i7 (g = 2) outscores
  # its i6; u1's and u2's targets score 0, behind i0 (ties go to the lower
  # row in top_k).
  validation = embed.evaluate_model(
    query_tower,
    item_tower,
    prepared,
    "validation",
    eval_config,
    history_length=5,
  )
  assert validation["num_pairs"] == 3
  assert validation["recall@1"] == 0.0


# `others` (N = 3, timed): each training row reads its user's latest
# training items but itself. u0 latest first: i2 (r3), i0 (r0), i3 (r4),
# i1 (r1); u1: i4 (r5), i2 (r2).
TRAIN_OTHERS_TIMED = [
  [2, 3, 1],  # r0 (i0): i2, i3, i1
  [2, 0, 3],  # r1 (i1): the latest three, u0's validation history
  [4, P, P],  # r2 (i2): i4
  [0, 3, 1],  # r3 (i2): i0, i3, i1
  [2, 0, 1],  # r4 (i3): i2, i0, i1
  [2, P, P],  # r5 (i4): i2
]


def test_others_histories_are_the_evaluation_history_less_the_row():
  prepared = leak_dataset(True)
  train = history.training_histories(prepared)
  got = train.rows(np.arange(6), 3, mode=history.OTHERS)
  np.testing.assert_array_equal(got, TRAIN_OTHERS_TIMED)
  items = prepared.splits["train"].item_index
  # Never the row's own item, never a validation or test item (i5, i6,
  # i7 are held out).
  for row, hist in enumerate(got):
    assert items[row] not in hist
    assert not set(hist) & {5, 6, 7}
  # A row older than the latest N reads exactly its user's validation
  # history (what the evaluation reads).
  validation = history.evaluation_histories(prepared, "validation", 3)
  np.testing.assert_array_equal(got[1], validation[0])
  # The stream gathers the same, shuffled.
  stream = data.main_dataset(
    prepared, "train", 3, seed=3, history_length=3, history_mode="others"
  )
  _assert_stream_histories(prepared, stream, TRAIN_OTHERS_TIMED)


def _assert_stream_histories(prepared, stream, expected):
  """Every training row comes once, with its expected history; (user,
  item) names a training row uniquely in `leak_dataset`."""
  train = prepared.splits["train"]
  row_of = {
    (int(q), int(i)): r
    for r, (q, i) in enumerate(
      zip(train.query_index, train.item_index, strict=True)
    )
  }
  seen = []
  for batch in stream:
    for user, item, got in zip(
      batch["query"]["user_id"].numpy() - 1,
      batch["item_index"].numpy(),
      batch["query"]["history"].numpy(),
      strict=True,
    ):
      row = row_of[(int(user), int(item))]
      seen.append(row)
      np.testing.assert_array_equal(got, expected[row])
  assert sorted(seen) == list(range(len(train)))


def test_auto_reads_before_for_temporal_and_others_for_random_splits():
  assert history.training_mode("auto", "temporal") == history.BEFORE
  assert history.training_mode("auto", "random") == history.OTHERS
  assert history.training_mode("before", "random") == history.BEFORE
  with pytest.raises(ValueError):
    history.training_mode("sideways", "random")
