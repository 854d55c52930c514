"""Tests of full-corpus evaluation: golden values, slices, a reference."""

import json
import os

import numpy as np
import pytest

from tfr_ssl.evaluation import metrics as evaluate

# Three items and two queries in 2-D:
#   items i0 = [1, 0], i1 = [0, 1], i2 = [1, 1]
#   q0 = [3, 1]: scores [3, 1, 4] -> order i2, i0, i1
#   q1 = [1, 2]: scores [1, 2, 3] -> order i2, i1, i0
ITEMS = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
QUERIES = np.array([[3, 1], [1, 2]], np.float32)
# Held-out pairs: (q0, i0), (q0, i1), (q1, i1).
PAIRS_QUERY = np.array([0, 0, 1])
PAIRS_ITEM = np.array([0, 1, 1])
# q0 saw i2 in training; q1 saw nothing: CSR indptr [0, 1, 1], indices [2].
EXCLUDE = (np.array([0, 1, 1]), np.array([2]))


def test_golden_values_with_exclusion():
  metrics = evaluate.evaluate_embeddings(
    QUERIES, ITEMS, PAIRS_QUERY, PAIRS_ITEM, exclude=EXCLUDE, ks=(1, 2)
  )
  # q0 without i2: i0 at position 0, i1 at position 1.
  # q1: i2 (0), i1 (1), i0 (2) -> (q1, i1) at position 1.
  # Recall@1: only (q0, i0) -> 1/3. Recall@2: all three -> 1.
  assert metrics["recall@1"] == pytest.approx(1 / 3)
  assert metrics["recall@2"] == pytest.approx(1.0)
  # MAP@1: q0 has 2 relevant, i0 at 0 has precision 1/1, / min(1, 2) -> 1;
  #        q1: i1 at position 1 is not in the top 1 -> 0. Mean 0.5.
  assert metrics["map@1"] == pytest.approx(0.5)
  # MAP@2: q0: (1/1 + 2/2) / min(2, 2) = 1; q1: (1/2) / min(2, 1) = 0.5.
  assert metrics["map@2"] == pytest.approx(0.75)
  assert metrics["num_pairs"] == 3
  assert metrics["num_queries"] == 2
  assert metrics["num_items"] == 3
  assert metrics["num_pairs_target_in_train"] == 0


def test_golden_values_without_exclusion():
  metrics = evaluate.evaluate_embeddings(
    QUERIES, ITEMS, PAIRS_QUERY, PAIRS_ITEM, ks=(1, 2)
  )
  # q0 keeps i2 first: (q0, i0) at 1, (q0, i1) at 2; (q1, i1) at 1.
  assert metrics["recall@1"] == pytest.approx(0.0)
  assert metrics["recall@2"] == pytest.approx(2 / 3)
  # MAP@2: q0: i0 at 1 -> 1/2, i1 missed; / min(2, 2) -> 0.25.
  #        q1: i1 at 1 -> 1/2 / 1 -> 0.5. Mean 0.375.
  assert metrics["map@2"] == pytest.approx(0.375)


def test_held_out_item_also_seen_in_training_stays_scoreable():
  # q0 saw i0 and i2 in training and i0 is also its held-out item: i2 is
  # masked, i0 is kept, so i0 (score 3) beats i1 (score 1) at position 0.
  exclude = (np.array([0, 2, 2]), np.array([0, 2]))
  metrics = evaluate.evaluate_embeddings(
    QUERIES, ITEMS, np.array([0]), np.array([0]), exclude=exclude, ks=(1,)
  )
  assert metrics["recall@1"] == 1.0
  assert metrics["num_pairs_target_in_train"] == 1


def test_exclusion_masks_only_the_querys_own_items():
  # q1's ranking is i2, i1, i0. Excluding i2 and i1 for q1 lifts i0 to 0,
  # while the same exclusions for q0 must not touch q1.
  exclude_q1 = (np.array([0, 0, 2]), np.array([2, 1]))
  exclude_q0 = (np.array([0, 2, 2]), np.array([2, 1]))
  pairs = (np.array([1]), np.array([0]))
  hit = evaluate.evaluate_embeddings(
    QUERIES, ITEMS, *pairs, exclude=exclude_q1, ks=(1,)
  )
  miss = evaluate.evaluate_embeddings(
    QUERIES, ITEMS, *pairs, exclude=exclude_q0, ks=(1,)
  )
  assert hit["recall@1"] == 1.0
  assert miss["recall@1"] == 0.0


# Most-popular baseline. Training counts of five items [2, 5, 0, 5, 1]:
# the fixed ranking (count descending, ties to the lower row) is
# i1 (5), i3 (5), i0 (2), i4 (1), i2 (0).
POPULAR_COUNT = np.array([2, 5, 0, 5, 1])
# q0 excludes i1; q1 excludes i3 and i0, but i0 is also one of q1's
# held-out items, so only i3 is masked for q1.
POPULAR_EXCLUDE = (np.array([0, 1, 3]), np.array([1, 3, 0]))
# Pairs (q0, i3), (q0, i2), (q1, i0), (q1, i4).
POPULAR_PAIRS = (np.array([0, 0, 1, 1]), np.array([3, 2, 0, 4]))


def test_most_popular_golden_values():
  metrics = evaluate.evaluate_most_popular(
    POPULAR_COUNT, *POPULAR_PAIRS, exclude=POPULAR_EXCLUDE, ks=(1, 2, 3)
  )
  # q0 ranks i3, i0, i4, i2 (i1 masked): (q0, i3) at 0, (q0, i2) at 3.
  # q1 ranks i1, i0, i4, i2 (i3 masked): (q1, i0) at 1, (q1, i4) at 2.
  np.testing.assert_array_equal(
    evaluate.most_popular_positions(
      POPULAR_COUNT,
      *POPULAR_PAIRS,
      exclude=(np.array([0, 1, 2]), np.array([1, 3])),
    ),
    [0, 3, 1, 2],
  )
  assert metrics["recall@1"] == pytest.approx(1 / 4)
  assert metrics["recall@2"] == pytest.approx(2 / 4)
  assert metrics["recall@3"] == pytest.approx(3 / 4)
  # MAP@2: q0: i3 at 0 -> 1/1, i2 missed; / min(2, 2) -> 0.5.
  #        q1: i0 at 1 -> 1/2, i4 at 2 missed; / 2 -> 0.25. Mean 0.375.
  assert metrics["map@2"] == pytest.approx(0.375)
  # MAP@3: q0 still 0.5; q1: (1/2 + 2/3) / 2 = 7/12. Mean 13/24.
  assert metrics["map@3"] == pytest.approx(13 / 24)
  assert metrics["num_pairs_target_in_train"] == 1
  assert metrics["num_items"] == 5
  # Without exclusions every query ranks i1, i3, i0, i4, i2: positions
  # 1, 4, 2, 3 -> recall@2 = 1/4.
  plain = evaluate.evaluate_most_popular(
    POPULAR_COUNT, *POPULAR_PAIRS, ks=(2,), with_slices=False
  )
  assert plain["recall@2"] == pytest.approx(1 / 4)
  assert "slices" not in plain


def test_most_popular_slices_use_the_same_definitions():
  metrics = evaluate.evaluate_most_popular(
    POPULAR_COUNT,
    *POPULAR_PAIRS,
    exclude=POPULAR_EXCLUDE,
    ks=(1, 2),
    head_fraction=0.5,
  )
  # Seen: i0, i1, i3, i4; head = round(0.5 * 4) = 2 items, i1 and i3.
  # Head pair (q0, i3) hits at 0; tail pairs (q1, i0) at 1 and (q1, i4) at
  # 2; cold pair (q0, i2) at 3.
  slices = metrics["slices"]
  assert (slices["head"]["num_items"], slices["head"]["num_pairs"]) == (2, 1)
  assert slices["head"]["recall@1"] == 1.0
  assert (slices["tail"]["num_pairs"], slices["tail"]["recall@2"]) == (2, 0.5)
  assert (slices["cold"]["num_pairs"], slices["cold"]["recall@2"]) == (1, 0.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_most_popular_equals_exact_search_on_count_embeddings(seed):
  # The baseline is exact search with item embedding = training count and
  # one query embedding [1]: the same ranking, ties to the lower row.
  _, _, pairs_query, pairs_item, exclude = _random_problem(seed)
  rng = np.random.default_rng(seed)
  count = rng.integers(0, 6, 60)  # few values: many ties
  count[:5] = 0  # and some cold items
  ks = (1, 5, 20)
  exact = evaluate.evaluate_embeddings(
    np.ones((40, 1), np.float32),
    count[:, np.newaxis].astype(np.float32),
    pairs_query,
    pairs_item,
    exclude=exclude,
    item_train_count=count,
    ks=ks,
  )
  baseline = evaluate.evaluate_most_popular(
    count, pairs_query, pairs_item, exclude=exclude, ks=ks
  )
  assert baseline == exact


# The same pairs with slices. Counts: i0 = 5, i1 = 1, i2 cold. Two seen
# items, round(2 / 3) = 1 head item: i0 is head, i1 tail.
SLICED = {
  "pairs_query": PAIRS_QUERY,
  "pairs_item": PAIRS_ITEM,
  "exclude": EXCLUDE,
  "ks": (1, 2),
  "head_fraction": 1 / 3,
}
SLICE_COUNT = np.array([5, 1, 0])


def sliced_metrics():
  """The model's metrics of the golden example, with slices and deciles."""
  return evaluate.evaluate_embeddings(
    QUERIES, ITEMS, item_train_count=SLICE_COUNT, **SLICED
  )


def test_slice_metrics_count_pairs_by_item():
  metrics = sliced_metrics()
  head, tail, cold = (metrics["slices"][s] for s in ("head", "tail", "cold"))
  # Pair (q0, i0) is head and a hit at 1; (q0, i1) and (q1, i1) are tail at
  # position 1: recall@1 0, recall@2 1. No pair has the cold item.
  assert (head["num_items"], head["num_pairs"]) == (1, 1)
  assert (head["recall@1"], head["recall@2"]) == (1.0, 1.0)
  assert (tail["num_items"], tail["num_pairs"]) == (1, 2)
  assert (tail["recall@1"], tail["recall@2"]) == (0.0, 1.0)
  assert (cold["num_items"], cold["num_pairs"]) == (1, 0)
  assert cold["recall@1"] is None
  # Distinct held-out items per slice: i0 (head); i1, twice (tail); none.
  assert [
    metrics["slices"][s]["num_held_out_items"] for s in ("head", "tail", "cold")
  ] == [1, 1, 0]
  # Three items over ten deciles: rows 2 (count 0), 1 (1), 0 (5) take
  # deciles 0, 3 and 6 (rank * 10 // 3).
  by_decile = {row["decile"]: row for row in metrics["deciles"]}
  assert by_decile[3]["num_pairs"] == 2 and by_decile[3]["recall@1"] == 0.0
  assert by_decile[6]["num_pairs"] == 1 and by_decile[6]["recall@1"] == 1.0
  assert by_decile[0]["num_pairs"] == 0 and by_decile[0]["recall@1"] is None
  assert sum(row["num_pairs"] for row in metrics["deciles"]) == 3
  json.dumps(metrics)  # JSON-ready


def _reference(queries, items, pairs_query, pairs_item, exclude, ks):
  """Loop-by-loop numpy version of the protocol."""
  positions = np.empty(len(pairs_query), np.int64)
  for p, (q, item) in enumerate(zip(pairs_query, pairs_item, strict=True)):
    scores = queries[q].astype(np.float64) @ items.T.astype(np.float64)
    if exclude is not None:
      seen = exclude[1][exclude[0][q] : exclude[0][q + 1]]
      targets = pairs_item[pairs_query == q]
      scores[np.setdiff1d(seen, targets)] = -np.inf
    # Stable sort: ties go to the lower row, as in tf.math.top_k.
    order = np.argsort(-scores, kind="stable")
    positions[p] = np.flatnonzero(order == item)[0]
  result = {}
  for k in ks:
    result[f"recall@{k}"] = float(np.mean(positions < k))
    average_precisions = []
    for q in np.unique(pairs_query):
      relevant = {}
      for p in np.flatnonzero(pairs_query == q):
        relevant[pairs_item[p]] = positions[p]
      ranks = sorted(relevant.values())
      hits = [(j + 1) / (r + 1) for j, r in enumerate(ranks) if r < k]
      average_precisions.append(sum(hits) / min(k, len(ranks)))
    result[f"map@{k}"] = float(np.mean(average_precisions))
  return result


def _random_problem(seed, num_queries=40, num_items=60, dim=6, num_pairs=150):
  rng = np.random.default_rng(seed)
  # Small integers: float32 dot products are exact and ties are common, so
  # the reference and the tf path must also agree on tie-breaking.
  queries = rng.integers(-2, 3, (num_queries, dim)).astype(np.float32)
  items = rng.integers(-2, 3, (num_items, dim)).astype(np.float32)
  pairs_query = rng.integers(0, num_queries, num_pairs)
  pairs_item = rng.integers(0, num_items, num_pairs)
  lengths = rng.integers(0, 8, num_queries)
  indptr = np.concatenate([[0], np.cumsum(lengths)])
  indices = rng.integers(0, num_items, indptr[-1])
  # Some held-out pairs also in training (and some duplicate pairs).
  indices[indptr[pairs_query[:10]]] = pairs_item[:10]
  pairs_query[-5:], pairs_item[-5:] = pairs_query[:5], pairs_item[:5]
  return queries, items, pairs_query, pairs_item, (indptr, indices)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_bruteforce_reference(seed):
  queries, items, pairs_query, pairs_item, exclude = _random_problem(seed)
  ks = (1, 5, 20, 100)  # 100 > num_items: every unmasked item is retrieved.
  metrics = evaluate.evaluate_embeddings(
    queries, items, pairs_query, pairs_item, exclude=exclude, ks=ks
  )
  expected = _reference(queries, items, pairs_query, pairs_item, exclude, ks)
  for key, value in expected.items():
    assert metrics[key] == pytest.approx(value, abs=1e-12), key
  assert metrics["recall@100"] == 1.0


def test_batch_size_does_not_change_metrics():
  queries, items, pairs_query, pairs_item, exclude = _random_problem(3)
  count = np.random.default_rng(3).integers(0, 5, items.shape[0])
  results = [
    evaluate.evaluate_embeddings(
      queries,
      items,
      pairs_query,
      pairs_item,
      exclude=exclude,
      item_train_count=count,
      ks=(1, 10),
      batch_size=batch_size,
    )
    for batch_size in (1, 7, 4096)
  ]
  assert results[0] == results[1] == results[2]


def test_item_to_item_mode_one_query_row_per_pair():
  queries, items, _, pairs_item, _ = _random_problem(4)
  num_pairs = 30
  # One query embedding per pair: the "previous item" of each pair.
  per_pair = items[np.arange(num_pairs) % items.shape[0]] + queries[:num_pairs]
  pairs_query = np.arange(num_pairs)
  metrics = evaluate.evaluate_embeddings(
    per_pair, items, pairs_query, pairs_item[:num_pairs], ks=(1, 10)
  )
  expected = _reference(
    per_pair, items, pairs_query, pairs_item[:num_pairs], None, (1, 10)
  )
  assert metrics["num_queries"] == num_pairs
  assert metrics["recall@10"] == pytest.approx(expected["recall@10"])
  # One relevant item per query: MAP@k is the mean reciprocal rank in top k.
  assert metrics["map@10"] == pytest.approx(expected["map@10"])


def test_bad_inputs_are_named():
  with pytest.raises(evaluate.EvaluationInputError, match="pairs_item"):
    evaluate.evaluate_embeddings(QUERIES, ITEMS, [0], [3])
  with pytest.raises(evaluate.EvaluationInputError, match="dims"):
    evaluate.evaluate_embeddings(QUERIES, ITEMS[:, :1], [0], [0])
  with pytest.raises(evaluate.EvaluationInputError, match="indptr"):
    evaluate.evaluate_embeddings(
      QUERIES, ITEMS, [0], [0], exclude=(np.array([0, 1]), np.array([2]))
    )


def test_metrics_file(tmp_path):
  count = np.array([5, 1, 0])
  metrics = evaluate.evaluate_embeddings(
    QUERIES, ITEMS, PAIRS_QUERY, PAIRS_ITEM, item_train_count=count, ks=(1, 2)
  )
  path = tmp_path / "eval" / "metrics.json"
  evaluate.write_metrics(metrics, str(path))
  with open(path) as f:
    assert json.load(f) == json.loads(json.dumps(metrics))
  # Only the final file remains: the temporary was renamed away.
  assert os.listdir(tmp_path / "eval") == ["metrics.json"]


def test_metrics_from_topk_match_exact_search():
  queries, items, pairs_query, pairs_item, _ = _random_problem(5)
  count = np.random.default_rng(5).integers(0, 4, items.shape[0])
  scores = queries.astype(np.float64) @ items.T.astype(np.float64)
  # The top 20 rows per query, ties to the lower row (stable sort).
  topk = np.argsort(-scores, axis=1, kind="stable")[:, :20]
  from_topk = evaluate.metrics_from_topk(
    topk, pairs_query, pairs_item, item_train_count=count, ks=(1, 5, 20)
  )
  exact = evaluate.evaluate_embeddings(
    queries,
    items,
    pairs_query,
    pairs_item,
    item_train_count=count,
    ks=(1, 5, 20),
  )
  del exact["num_pairs_target_in_train"]
  assert from_topk == exact
  with pytest.raises(evaluate.EvaluationInputError, match="columns"):
    evaluate.metrics_from_topk(topk, pairs_query, pairs_item, ks=(50,))


def test_metrics_from_topk_golden_with_padding():
  # Query 0 retrieved rows [2, 0, -1] (-1 = nothing), query 1 [1, 2, 0].
  topk = np.array([[2, 0, -1], [1, 2, 0]])
  # Pairs (0, 0) at position 1, (0, 1) missed, (1, 0) at position 2.
  metrics = evaluate.metrics_from_topk(
    topk, np.array([0, 0, 1]), np.array([0, 1, 0]), ks=(1, 3)
  )
  assert metrics["recall@1"] == 0.0
  assert metrics["recall@3"] == pytest.approx(2 / 3)
  # MAP@3: q0 (1/2) / min(3, 2) = 0.25; q1 (1/3) / 1. Mean 7/24.
  assert metrics["map@3"] == pytest.approx(7 / 24)


@pytest.mark.parametrize(
  "pairs_query, pairs_item, ks, message",
  [
    ([0, 2], [0, 1], (1,), r"pairs_query\[1\] = 2 is outside \[0, 2\)"),
    ([0], [0, 1], (1,), "1-D of equal length"),
    ([], [], (1,), "No held-out pairs"),
    ([0], [0], (0, 1), "positive integers"),
    ([0], [0], (4,), "at least 4 columns"),
  ],
)
def test_metrics_from_topk_checks_inputs_like_exact_search(
  pairs_query, pairs_item, ks, message
):
  # Two queries' top-3 lists; the same checks (and messages) as
  # evaluate_embeddings, plus lists too short for a K.
  topk = np.array([[2, 0, 1], [1, 2, 0]])
  with pytest.raises(evaluate.EvaluationInputError, match=message):
    evaluate.metrics_from_topk(topk, pairs_query, pairs_item, ks=ks)
