"""Tests of the main retrieval loss and the spread-out regulariser."""

import numpy as np
import pytest
import tensorflow as tf

import tfr_ssl  # noqa: F401
from tfr_ssl.model import losses

# Two queries, two candidates (unit vectors), temperature .5:
#   cos = [[1, .6], [0, .8]]  -> logits [[2, 1.2], [0, 1.6]]
QUERIES = tf.constant([[1.0, 0.0], [0.0, 1.0]])
CANDIDATES = tf.constant([[1.0, 0.0], [0.6, 0.8]])
IDS = tf.constant([10, 20])
LOG_Q = tf.math.log(tf.constant([0.5, 0.25]))


def _loss(**kwargs):
  kwargs.setdefault("temperature", 0.5)
  return losses.RetrievalLoss(**kwargs)


def test_softmax_golden_without_correction():
  # row 0: log(1 + e^(1.2 - 2)) = 0.37110; row 1: log(1 + e^(0 - 1.6)) =
  # 0.18390; mean 0.27750.
  loss = _loss()(QUERIES, CANDIDATES, candidate_ids=IDS)
  assert float(loss) == pytest.approx(0.27750, abs=1e-5)


def test_softmax_correction_is_exact_past_a_million_to_one():
  # Orthogonal unit vectors, temperature 1: cos = identity. Item 20 is
  # e^20 (4.9e8) times rarer than item 10: log_q = [0, -20].
  #   row 0 logits [1 - 0, 0 + 20] -> log(1 + e^19) = 19.0000000056
  #   row 1 logits [0 - 0, 1 + 20] -> log(1 + e^-21) = 7.6e-10; mean 9.5.
  # Clipping probabilities at 1e-6 (TFRS Retrieval's input) would cap the
  # rare item's correction at log(1e6) = 13.8155: row 0 = log(1 + e^12.8155)
  # = 12.8155, mean 6.41.
  identity = tf.eye(2)
  loss = losses.RetrievalLoss(temperature=1.0)(
    identity, identity, candidate_ids=IDS, log_q=tf.constant([0.0, -20.0])
  )
  assert float(loss) == pytest.approx(9.5, abs=1e-4)


def test_softmax_golden_with_logq_on_every_logit():
  # Subtract log p = log[.5, .25] from every column, positive included:
  #   logits [[2 + .6931, 1.2 + 1.3863], [0 + .6931, 1.6 + 1.3863]]
  # row 0: log(1 + e^(2.5863 - 2.6931)) = 0.64115
  # row 1: log(1 + e^(0.6931 - 2.9863)) = 0.09617;  mean 0.36866.
  loss = _loss()(QUERIES, CANDIDATES, candidate_ids=IDS, log_q=LOG_Q)
  assert float(loss) == pytest.approx(0.36866, abs=1e-5)
  # Scaling every p by a constant shifts each row: same loss.
  shifted = _loss()(
    QUERIES, CANDIDATES, candidate_ids=IDS, log_q=LOG_Q + np.log(1e-3)
  )
  assert float(shifted) == pytest.approx(0.36866, abs=1e-5)
  # Correcting only the negatives would give a different number (row 0:
  # log(1 + e^(2.5863 - 2)) = 1.03866): the positive's correction matters.
  assert abs(float(loss) - 0.5 * (1.03866 + 0.18390)) > 0.2


def test_mixed_log_q_adds_expected_counts():
  # B p_j + M q_j with M = 2 uniform draws over N = 8: q = 1/8.
  out = losses.mixed_log_q(tf.constant([0.5, 0.25]), 1 / 8, num_mixed=2)
  np.testing.assert_allclose(np.exp(out), [0.75, 0.5], rtol=1e-6)
  np.testing.assert_allclose(
    np.exp(losses.mixed_log_q(tf.constant([0.5]))), [0.5], rtol=1e-6
  )


def test_mask_accidental_hits_masks_only_other_copies_of_the_positive():
  # Queries 0 and 1 have positives 7 and 8 (candidates 0 and 1); candidate 2
  # is item 7 again: a hit for query 0 only. The positives stay, even
  # query 1's, whose id 8 appears once.
  logits = tf.constant([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
  masked = losses.mask_accidental_hits(logits, tf.constant([7, 8, 7]))
  np.testing.assert_array_equal(
    masked, [[1.0, 2.0, losses.MIN_LOGIT], [4.0, 5.0, 6.0]]
  )


def test_pairwise_skips_accidental_hits():
  # Both candidates are item 10: each query has no negative left, so the
  # pairwise loss averages over nothing and is 0.
  loss = _loss(loss="pairwise")(
    QUERIES, CANDIDATES, candidate_ids=tf.constant([10, 10])
  )
  assert float(loss) == pytest.approx(0.0, abs=1e-6)


def test_accidental_hits_are_removed():
  same = tf.constant([10, 10])
  # Each row's only negative shares the positive's id: softmax over the
  # positive alone, loss 0.
  loss = _loss()(QUERIES, CANDIDATES, candidate_ids=same)
  assert float(loss) == pytest.approx(0.0, abs=1e-6)
  kept = _loss(remove_accidental_hits=False)(
    QUERIES, CANDIDATES, candidate_ids=same
  )
  assert float(kept) == pytest.approx(0.27750, abs=1e-5)


def test_sample_weight_is_a_mean_over_the_batch():
  # (2 * 0.37110 + 0 * 0.18390) / 2 rows.
  loss = _loss()(
    QUERIES, CANDIDATES, candidate_ids=IDS, sample_weight=tf.constant([2.0, 0])
  )
  assert float(loss) == pytest.approx(0.37110, abs=1e-5)


def test_pointwise_golden():
  # row 0: softplus(-2) + softplus(1.2) = 0.12693 + 1.46328 = 1.59021
  # row 1: softplus(-1.6) + softplus(0) = 0.18390 + 0.69315 = 0.87705
  loss = _loss(loss="pointwise")(QUERIES, CANDIDATES, candidate_ids=IDS)
  assert float(loss) == pytest.approx((1.59021 + 0.87705) / 2, abs=1e-5)


def test_pairwise_golden():
  # logistic: softplus(-(2 - 1.2)) = 0.37110, softplus(-(1.6 - 0)) = 0.18390.
  logistic = _loss(loss="pairwise")(QUERIES, CANDIDATES, candidate_ids=IDS)
  assert float(logistic) == pytest.approx(0.27750, abs=1e-5)
  # hinge, margin .5 in cosine units: cos gaps .4 and .8:
  # relu(.5 - .4) = .1, relu(.5 - .8) = 0; mean .05.
  hinge = _loss(loss="pairwise", pairwise_loss="hinge", margin=0.5)(
    QUERIES, CANDIDATES, candidate_ids=IDS
  )
  assert float(hinge) == pytest.approx(0.05, abs=1e-6)


def _reference(q, c, ids, log_q, tau, loss, hard, hinge_margin=None):
  """Per-query losses by brute force over the kept negatives, in numpy."""
  logits = q @ c.T / tau - log_q[None, :]
  out = []
  for i in range(len(q)):
    negatives = [j for j in range(len(c)) if j != i and ids[j] != ids[i]]
    neg = np.sort(logits[i, negatives])[::-1]
    if hard:
      neg = neg[:hard]
    pos = logits[i, i]
    if loss == "softmax":
      row = np.concatenate([[pos], neg])
      out.append(np.log(np.exp(row - row.max()).sum()) + row.max() - pos)
    elif loss == "pointwise":
      out.append(np.logaddexp(0, -pos) + np.logaddexp(0, neg).mean())
    elif hinge_margin is None:
      out.append(np.logaddexp(0, -(pos - neg)).mean())
    else:
      out.append(np.maximum(0, hinge_margin - tau * (pos - neg)).mean())
  return np.mean(out)


@pytest.mark.parametrize(
  "loss,pairwise,hard",
  [
    ("softmax", "logistic", 0),
    ("softmax", "logistic", 2),
    ("pointwise", "logistic", 0),
    ("pointwise", "logistic", 2),
    ("pairwise", "logistic", 0),
    ("pairwise", "hinge", 3),
  ],
)
def test_matches_brute_force_with_mixed_negatives_and_hits(
  loss, pairwise, hard
):
  rng = np.random.default_rng(0)
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
  q = unit(rng.normal(size=(5, 4))).astype(np.float32)
  c = unit(rng.normal(size=(8, 4))).astype(np.float32)
  # 5 in-batch positives (item 3 twice) + 3 mixed negatives (one is item 1).
  ids = np.array([1, 3, 3, 4, 5, 1, 8, 9], np.int32)
  log_q = np.log(rng.uniform(0.01, 1.0, size=8)).astype(np.float32)
  task = losses.RetrievalLoss(
    loss=loss,
    temperature=0.3,
    num_hard_negatives=hard,
    pairwise_loss=pairwise,
    margin=0.2,
  )
  got = task(q, c, candidate_ids=ids, log_q=log_q)
  margin = 0.2 if pairwise == "hinge" else None
  want = _reference(q, c, ids, log_q, 0.3, loss, hard, margin)
  assert float(got) == pytest.approx(want, rel=1e-4)


def test_main_loss_metric_tracks_the_mean():
  task = _loss()
  task(QUERIES, CANDIDATES, candidate_ids=IDS)
  assert float(task.loss_tracker.result()) == pytest.approx(0.27750, abs=1e-5)


def test_get_config_round_trip():
  task = _loss(loss="pairwise", pairwise_loss="hinge", margin=0.3)
  clone = losses.RetrievalLoss.from_config(task.get_config())
  assert clone.get_config() == task.get_config()
  np.testing.assert_allclose(
    clone(QUERIES, CANDIDATES, candidate_ids=IDS),
    task(QUERIES, CANDIDATES, candidate_ids=IDS),
  )


def test_bad_options_are_clear_errors():
  with pytest.raises(ValueError, match="loss must be one of"):
    losses.RetrievalLoss(loss="listwise")
  with pytest.raises(ValueError, match="needs candidate_ids"):
    _loss()(QUERIES, CANDIDATES)


def test_spread_out_golden():
  e = tf.constant([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
  # Distinct ordered pairs: cosines 0, 1, 0 each twice.
  # M1 = 2/6 = 1/3, M2 = 1/3, d = 2: (1/3)^2 + max(0, 1/3 - 1/2) = 1/9.
  assert float(losses.spread_out_loss(e)) == pytest.approx(1 / 9, abs=1e-6)
  # Rows 0 and 2 are the same item: not a distinct pair -> M1 = M2 = 0.
  same = losses.spread_out_loss(e, tf.constant([5, 6, 5]))
  assert float(same) == pytest.approx(0.0, abs=1e-7)
  # An orthonormal basis is perfectly spread: M1 = 0, M2 = 0 < 1/d.
  assert float(losses.spread_out_loss(tf.eye(4))) == pytest.approx(0.0)
