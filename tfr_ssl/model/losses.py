"""The main retrieval loss: in-batch softmax with logQ correction, and kin.

Sampling-bias correction with mixed negatives
---------------------------------------------
Per step, query `i`'s candidates are the multiset of the batch's `B`
positives (iid draws from the training interactions, item `j` with
probability `p_j` per draw) plus `M` extra negatives drawn from a proposal
`Q` (probability `q_j` per draw: `1/N` uniform, or `count_j^beta / Z`).
Sampled softmax (Bengio and Senecal 2008; Jean et al. 2015) is unbiased in
the limit when every candidate's logit is corrected by the log of its
expected multiplicity in the candidate set:

  E[n_j] = B p_j + M q_j
  logit_ij = cos(u_i, v_j) / tau - log(B p_j + M q_j)

applied to EVERY candidate including the positive, and by item, not by the
stream a candidate came from (a head item drawn as a mixed negative gets the
same correction as when it is an in-batch positive). Special cases: `M = 0`
gives Yi et al.'s `- log p_j` (the factor B is a constant shift per row,
which the softmax ignores); `B p_j << M q_j` gives the uniform correction
`log(M / N)`, a constant, i.e. no correction, as expected for a uniform
proposal. Dividing by `B + M` turns `E[n_j]` into the per-draw probability
of the mixture proposal, `(B p_j + M q_j) / (B + M)` (mixed negative
sampling, Yang et al. 2020); again only a constant shift.

`sampling.py` provides `B p_j`, the expected copies per batch, directly, so
the caller passes `log_q = log(batch_expected_count + M * q)` per candidate;
see `mixed_log_q`.

Reductions are means (weighted sum over the batch divided by the batch size,
across replicas under a `tf.distribute` strategy, via
`tf.nn.compute_average_loss`), so loss weights and the learning rate keep
their meaning when the batch size changes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras

from tfr_ssl import config as config_lib

LOSSES = ("softmax", "pointwise", "pairwise")
PAIRWISE = ("logistic", "hinge")
# The logit of a masked-out candidate (accidental hits, excluded items): far
# below any real logit, yet finite, so softmax and its gradient stay finite.
MIN_LOGIT = np.finfo(np.float32).min / 100.0


def mask_accidental_hits(
  logits: tf.Tensor, candidate_ids: tf.Tensor
) -> tf.Tensor:
  """The logits with every accidental hit set to `MIN_LOGIT`.

  Row `i` of `logits` is query `i`, whose positive is candidate `i`; an
  accidental hit is any other candidate with the positive's id (the same
  item drawn twice), which is not a negative. The one rule of the retrieval
  losses and the SSL task (`ssl_task.py`).

  Args:
    logits: `[B, C]`, `C >= B`.
    candidate_ids: `[C]` ids of the candidates, the `B` positives first.

  Returns:
    `[B, C]` logits, the positives and the other candidates unchanged.

  Example:
    >>> mask_accidental_hits(tf.zeros([2, 3]), tf.constant([7, 8, 7]))
    # [[0, 0, MIN_LOGIT], [0, 0, 0]]: candidate 2 is query 0's item again
  """
  num_queries = tf.shape(logits)[0]
  same = tf.equal(
    candidate_ids[:num_queries, tf.newaxis], candidate_ids[tf.newaxis, :]
  )
  own = tf.eye(num_queries, tf.shape(logits)[1], dtype=tf.bool)
  return tf.where(same & ~own, tf.cast(MIN_LOGIT, logits.dtype), logits)


def mixed_log_q(
  batch_expected_count: tf.Tensor,
  mixed_probability: tf.Tensor | float | None = None,
  num_mixed: int = 0,
) -> tf.Tensor:
  """`log(B p_j + M q_j)`: log expected multiplicity of each candidate.

  Args:
    batch_expected_count: `[C]` expected copies `B p_j` of each candidate's
      item per batch (`sampling.SamplingProbability.expected_counts`).
    mixed_probability: `[C]` (or scalar) per-draw probability `q_j` of the
      item under the mixed-negative proposal; ignored when `num_mixed == 0`.
    num_mixed: `M`, mixed negatives drawn per step.
  """
  expected = tf.cast(batch_expected_count, tf.float32)
  if num_mixed > 0:
    expected += num_mixed * tf.cast(mixed_probability, tf.float32)
  return tf.math.log(tf.maximum(expected, 1e-30))


def corrected_logits(
  queries: tf.Tensor,
  candidates: tf.Tensor,
  temperature: float,
  log_q: tf.Tensor | None = None,
) -> tf.Tensor:
  """`cos(u_i, v_j) / tau - log_q_j`: the one place the correction is made.

  Args:
    queries: `[B, E]` unit vectors.
    candidates: `[C, E]` unit vectors.
    temperature: `tau`.
    log_q: `[C]` log expected multiplicity of each candidate
      (`mixed_log_q`), or None for no correction.

  Returns:
    float32 `[B, C]` logits.
  """
  logits = tf.matmul(queries, candidates, transpose_b=True) / temperature
  if log_q is not None:
    logits -= tf.cast(log_q, logits.dtype)[tf.newaxis, :]
  return logits


@tf_keras.saving.register_keras_serializable(package="tfr_ssl")
class RetrievalLoss(tf_keras.layers.Layer):
  """Main task loss over in-batch (and extra) candidates; a mean scalar.

  Candidates are `[C, E]` with `C >= B`: row `i < B` is query `i`'s positive
  and a negative for every other query; rows `>= B` are extra negatives for
  all queries. Logits are `cos / temperature - log_q` (see module doc).

  - `softmax` (listwise): categorical cross-entropy over each row of the
    corrected logits, accidental hits masked (`mask_accidental_hits`) and
    TFRS's hard-negative layer (what `tfrs.tasks.Retrieval` does, but with
    `log_q` subtracted exactly:
    Retrieval takes probabilities and clips them to `[1e-6, 1]`, which
    truncates the correction of items more than 1e6 times rarer than the
    most frequent one).
  - `pointwise`: binary cross-entropy, label 1 for the positive and 0 for
    each kept negative, per query `softplus(-l_pos) + mean_neg
    softplus(l_neg)` (classes balanced, independent of the batch size).
    `log_q` enters as the NCE correction `l - log(expected count)`, so here
    its absolute level matters and is used as given.
  - `pairwise`: the positive against each kept negative, averaged over the
    negatives: `logistic` = `softplus(-(l_pos - l_neg))`, `hinge` =
    `relu(margin - tau (l_pos - l_neg))` (margin in cosine units; with no
    correction `tau (l_pos - l_neg) = cos_pos - cos_neg`).

  Accidental hits (a negative with the positive's item id) are removed and
  `num_hard_negatives > 0` keeps only the highest-logit negatives, for all
  three losses.

  Args:
    loss: One of `LOSSES`.
    temperature: Softmax temperature on cosine scores.
    remove_accidental_hits: Drop negatives sharing the positive's id.
    num_hard_negatives: Keep this many hardest negatives (0 = all).
    pairwise_loss: `logistic` or `hinge`.
    margin: Hinge margin (cosine units).
    **kwargs: Passed to `tf_keras.layers.Layer`.

  Example:
    >>> task = RetrievalLoss(temperature=0.05)
    >>> loss = task(query_emb, item_emb, candidate_ids=item_index,
    ...             log_q=tf.math.log(p), sample_weight=weight)
  """

  def __init__(
    self,
    loss: str = "softmax",
    temperature: float = 1.0,
    remove_accidental_hits: bool = True,
    num_hard_negatives: int = 0,
    pairwise_loss: str = "logistic",
    margin: float = 0.1,
    **kwargs: Any,
  ):
    super().__init__(**kwargs)
    if loss not in LOSSES:
      raise ValueError(f"loss must be one of {list(LOSSES)}, got {loss!r}.")
    if pairwise_loss not in PAIRWISE:
      raise ValueError(
        f"pairwise_loss must be one of {list(PAIRWISE)}, got {pairwise_loss!r}."
      )
    config_lib.check_value("model.temperature", temperature)
    config_lib.check_value("model.hard_negatives", num_hard_negatives)
    config_lib.check_value("model.margin", margin)
    self.loss = loss
    self.temperature = float(temperature)
    self.remove_accidental_hits = bool(remove_accidental_hits)
    self.num_hard_negatives = int(num_hard_negatives)
    self.pairwise_loss = pairwise_loss
    self.margin = float(margin)
    self.loss_tracker = tf_keras.metrics.Mean(name="main_loss")

  def call(
    self,
    query_embeddings: tf.Tensor,
    candidate_embeddings: tf.Tensor,
    candidate_ids: tf.Tensor | None = None,
    log_q: tf.Tensor | None = None,
    sample_weight: tf.Tensor | None = None,
  ) -> tf.Tensor:
    """The mean loss over the batch (a scalar).

    Args:
      query_embeddings: `[B, E]` unit vectors.
      candidate_embeddings: `[C, E]` unit vectors, `C >= B`, positives first.
      candidate_ids: `[C]` item ids; required to remove accidental hits.
      log_q: `[C]` log expected multiplicity of each candidate (or None for
        no sampling-bias correction).
      sample_weight: `[B]` example weights (None = 1).
    """
    if self.remove_accidental_hits and candidate_ids is None:
      raise ValueError(
        f"{self.name}: removing accidental hits needs candidate_ids."
      )
    logits = corrected_logits(
      query_embeddings, candidate_embeddings, self.temperature, log_q
    )
    if self.loss == "softmax":
      per_example = self._softmax(logits, candidate_ids)
    else:
      per_example = self._sampled_binary(logits, candidate_ids)
    return self._reduce(per_example, sample_weight)

  def _softmax(self, logits, candidate_ids):
    """Per-example listwise loss `[B]`, the positive of row i in column i."""
    labels = tf.eye(tf.shape(logits)[0], tf.shape(logits)[1])
    if self.remove_accidental_hits:
      logits = mask_accidental_hits(logits, candidate_ids)
    if self.num_hard_negatives:
      logits, labels = tfrs.layers.loss.HardNegativeMining(
        self.num_hard_negatives
      )(logits, labels)
    return tf.nn.softmax_cross_entropy_with_logits(labels, logits)

  def _sampled_binary(self, logits, candidate_ids):
    """Per-example pointwise or pairwise loss `[B]`."""
    num_queries = tf.shape(logits)[0]
    positive_mask = tf.eye(num_queries, tf.shape(logits)[1], dtype=tf.bool)
    positive = tf.linalg.diag_part(logits[:, :num_queries])
    if self.remove_accidental_hits:
      logits = mask_accidental_hits(logits, candidate_ids)
    negatives = tf.where(positive_mask, MIN_LOGIT, logits)
    if self.num_hard_negatives:
      k = tf.minimum(self.num_hard_negatives, tf.shape(logits)[1])
      negatives, _ = tf.math.top_k(negatives, k=k)
    valid = tf.cast(negatives > MIN_LOGIT / 2, tf.float32)
    count = tf.maximum(tf.reduce_sum(valid, axis=1), 1.0)
    if self.loss == "pointwise":
      neg_term = tf.reduce_sum(valid * tf.nn.softplus(negatives), axis=1)
      return tf.nn.softplus(-positive) + neg_term / count
    diff = positive[:, tf.newaxis] - negatives
    if self.pairwise_loss == "logistic":
      pair = tf.nn.softplus(-diff)
    else:
      pair = tf.nn.relu(self.margin - self.temperature * diff)
    return tf.reduce_sum(valid * pair, axis=1) / count

  def _reduce(self, per_example, sample_weight):
    if sample_weight is not None:
      sample_weight = tf.cast(sample_weight, tf.float32)
      weighted = per_example * sample_weight
    else:
      weighted = per_example
    self.loss_tracker.update_state(tf.reduce_mean(weighted))
    return tf.nn.compute_average_loss(per_example, sample_weight=sample_weight)

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update(
      {
        "loss": self.loss,
        "temperature": self.temperature,
        "remove_accidental_hits": self.remove_accidental_hits,
        "num_hard_negatives": self.num_hard_negatives,
        "pairwise_loss": self.pairwise_loss,
        "margin": self.margin,
      }
    )
    return config


def spread_out_loss(
  embeddings: tf.Tensor, ids: tf.Tensor | None = None
) -> tf.Tensor:
  """Spread-out (global orthogonal) regulariser of Zhang et al. 2017.

  For unit vectors in `d` dimensions drawn uniformly on the sphere, the
  cosine `s_ij` of a distinct pair has mean 0 and second moment `1/d`. Over
  the distinct pairs `P` of the batch (`i != j`, and different ids when
  `ids` is given, since a repeated item is not a distinct pair):

    M1 = mean_P s_ij,   M2 = mean_P s_ij^2
    L_so = M1^2 + max(0, M2 - 1/d)

  penalises embeddings that cluster (M1 > 0) or are more aligned than
  uniform (M2 > 1/d). Returns 0 when the batch has no distinct pair.

  Args:
    embeddings: `[N, d]` item embeddings (normalised inside).
    ids: Optional `[N]` item ids.
  """
  unit = tf.math.l2_normalize(embeddings, axis=-1)
  cosine = tf.matmul(unit, unit, transpose_b=True)
  n = tf.shape(unit)[0]
  distinct = tf.logical_not(tf.eye(n, dtype=tf.bool))
  if ids is not None:
    distinct &= tf.not_equal(ids[:, tf.newaxis], ids[tf.newaxis, :])
  weight = tf.cast(distinct, tf.float32)
  pairs = tf.maximum(tf.reduce_sum(weight), 1.0)
  m1 = tf.reduce_sum(weight * cosine) / pairs
  m2 = tf.reduce_sum(weight * tf.square(cosine)) / pairs
  dim = tf.cast(tf.shape(unit)[1], tf.float32)
  return tf.square(m1) + tf.nn.relu(m2 - 1.0 / dim)
