"""Two-view augmentations of categorical item features (Yao et al. 2021).

Pure in-graph functions on batched feature dicts. All randomness comes from
stateless ops keyed by an explicit `seed` (an int `[2]` tensor, e.g.
`[run_seed, step]`), so the same seed gives the same views eagerly, inside
`tf.function` and inside `tf.data.Dataset.map`.

A mask is a bool `[B, F]` tensor in the encoder's feature order; true means
"replace this feature by its default embedding" (see
`features.FeatureEncoder`).

Granularity (a choice, kept deliberately simple):
  - `rfm` and `cfm` draw ONE split per batch (the paper draws the CFM seed
    feature per batch) and broadcast it to every row.
  - `random` masking and value dropout are per example (an independent
    Bernoulli draw per row and feature, or per value).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

from tfr_ssl.data.contract import PAD

MASKINGS = ("none", "random", "rfm", "cfm")

# Offsets folded into the seed so every random draw of a step is independent.
_MASK_STREAM = 1
_DROPOUT_STREAM = {1: 2, 2: 3}


def _seed(seed: tf.Tensor | Sequence[int], stream: int) -> tf.Tensor:
  seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
  return tf.random.experimental.stateless_fold_in(seed, stream)


def random_masks(
  batch_size: tf.Tensor | int, num_features: int, rate: float, seed
) -> tuple[tf.Tensor, tf.Tensor]:
  """Each feature of each row masked independently with prob. `rate`.

  Returns:
    Two independent bool `[B, F]` masks, one per view.
  """
  draws = tf.random.stateless_uniform(
    [2, batch_size, num_features], seed=_seed(seed, _MASK_STREAM)
  )
  return draws[0] < rate, draws[1] < rate


def rfm_masks(
  batch_size: tf.Tensor | int, num_features: int, seed
) -> tuple[tf.Tensor, tf.Tensor]:
  """Random feature masking: a random half masked in view 1, the rest in 2.

  `floor(F / 2)` features, drawn uniformly without replacement once per
  batch, are masked in view 1; exactly the complement is masked in view 2,
  so every feature is masked in exactly one view.

  Returns:
    bool `[B, F]` masks (view 1, view 2) with `m1 == ~m2`.
  """
  if num_features < 2:
    raise ValueError(f"RFM needs at least 2 item features, got {num_features}.")
  scores = tf.random.stateless_uniform(
    [num_features], seed=_seed(seed, _MASK_STREAM)
  )
  # rank of each feature in a random order; the first half goes to view 1.
  rank = tf.argsort(tf.argsort(scores))
  masked = rank < num_features // 2
  view1 = tf.broadcast_to(masked, [batch_size, num_features])
  return view1, tf.logical_not(view1)


def cfm_top_count(num_features: int) -> int:
  """Correlated features masked with the seed: floor(F/2), capped at F-2.

  The cap only bites for F = 2 (seed alone), so view 1 always keeps at least
  one feature and view 2 masks at least one.
  """
  return max(0, min(num_features // 2, num_features - 2))


def cfm_masks(
  batch_size: tf.Tensor | int, mutual_information: tf.Tensor, seed
) -> tuple[tf.Tensor, tf.Tensor]:
  """Correlated feature masking (CFM).

  Per batch a seed feature `s` is drawn uniformly; view 1 masks `s` and the
  `cfm_top_count(F)` other features with the highest mutual information with
  `s` (the diagonal, an entropy, is excluded from the ranking; ties go to
  the lower index). View 2 masks exactly the complement. Masking correlated
  features together stops the model from reading a masked feature off an
  unmasked twin.

  Args:
    batch_size: Rows B.
    mutual_information: float `[F, F]` MI between item features.
    seed: int `[2]` seed.

  Returns:
    bool `[B, F]` masks (view 1, view 2) with `m1 == ~m2`.
  """
  mi = tf.convert_to_tensor(mutual_information, tf.float32)
  num_features = mi.shape[0]
  if num_features is None or mi.shape != (num_features, num_features):
    raise ValueError(f"CFM needs a square [F, F] MI matrix, got {mi.shape}.")
  if num_features < 2:
    raise ValueError(f"CFM needs at least 2 item features, got {num_features}.")
  top = cfm_top_count(num_features)
  anchor = tf.random.stateless_uniform(
    [], seed=_seed(seed, _MASK_STREAM), maxval=num_features, dtype=tf.int32
  )
  row = tf.gather(mi, anchor)
  row = tf.where(tf.range(num_features) == anchor, -np.inf, row)
  _, partners = tf.math.top_k(row, k=top)
  chosen = tf.concat([anchor[tf.newaxis], partners], axis=0)
  masked = tf.reduce_any(
    tf.one_hot(chosen, num_features, on_value=True, off_value=False), axis=0
  )
  view1 = tf.broadcast_to(masked, [batch_size, num_features])
  return view1, tf.logical_not(view1)


def dropout_values(ids: tf.Tensor, rate: float, seed) -> tf.Tensor:
  """Drops each value of a `[B, L]` bag with probability `rate` (-> PAD).

  Padding stays padding. A bag that loses every value becomes all-PAD,
  which the encoder treats as missing (default embedding).
  """
  if rate <= 0.0:
    return ids
  keep = tf.random.stateless_uniform(tf.shape(ids), seed=seed) >= rate
  return tf.where(keep, ids, tf.constant(PAD, ids.dtype))


class Augmenter:
  """Makes two augmented views of a batch of items.

  Args:
    feature_names: Item features, in the encoder's order (mask columns).
    multi_feature_names: The multi-valued ones (subject to value dropout).
    masking: One of `MASKINGS`.
    mask_rate: Rate of `random` masking.
    dropout_rate: Rate of value dropout in multi-valued features (0 = off).
    mutual_information: `[F, F]` MI matrix, required for `cfm`.

  Example:
    >>> augmenter = Augmenter(["id", "tags"], ["tags"], "rfm")
    >>> f1, m1, f2, m2 = augmenter(batch, seed=tf.constant([0, step]))
  """

  def __init__(
    self,
    feature_names: Sequence[str],
    multi_feature_names: Sequence[str] = (),
    masking: str = "cfm",
    mask_rate: float = 0.5,
    dropout_rate: float = 0.0,
    mutual_information: np.ndarray | None = None,
  ):
    if masking not in MASKINGS:
      raise ValueError(
        f"masking must be one of {list(MASKINGS)}, got {masking!r}."
      )
    unknown = sorted(set(multi_feature_names) - set(feature_names))
    if unknown:
      raise ValueError(f"Multi-valued features not in the list: {unknown}.")
    for name, rate in (
      ("mask_rate", mask_rate),
      ("dropout_rate", dropout_rate),
    ):
      if not 0.0 <= rate < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {rate}.")
    self.feature_names = list(feature_names)
    self.multi_feature_names = list(multi_feature_names)
    self.masking = masking
    self.mask_rate = float(mask_rate)
    self.dropout_rate = float(dropout_rate)
    num = len(self.feature_names)
    if masking in ("rfm", "cfm") and num < 2:
      raise ValueError(f"{masking} needs at least 2 item features, got {num}.")
    self.mutual_information = None
    if masking == "cfm":
      if mutual_information is None:
        raise ValueError("cfm masking needs the mutual information matrix.")
      mi = np.asarray(mutual_information, np.float32)
      if mi.shape != (num, num):
        raise ValueError(
          f"The mutual information matrix is {mi.shape}, expected "
          f"({num}, {num}) for item features {self.feature_names}."
        )
      self.mutual_information = mi

  def masks(self, batch_size, seed) -> tuple[tf.Tensor, tf.Tensor]:
    """The two views' bool `[B, F]` masks."""
    num = len(self.feature_names)
    if self.masking == "random":
      return random_masks(batch_size, num, self.mask_rate, seed)
    if self.masking == "rfm":
      return rfm_masks(batch_size, num, seed)
    if self.masking == "cfm":
      return cfm_masks(batch_size, self.mutual_information, seed)
    none = tf.zeros([batch_size, num], tf.bool)
    return none, none

  def __call__(
    self, features: Mapping[str, tf.Tensor], seed
  ) -> tuple[dict, tf.Tensor, dict, tf.Tensor]:
    """Returns `(features_1, mask_1, features_2, mask_2)`.

    Args:
      features: item feature name -> ids `[B]` / `[B, L]`.
      seed: int `[2]` seed; the same seed gives the same views.
    """
    first = tf.convert_to_tensor(features[self.feature_names[0]])
    batch_size = tf.shape(first)[0]
    mask1, mask2 = self.masks(batch_size, seed)
    views = []
    for view in (1, 2):
      out = dict(features)
      for i, name in enumerate(self.multi_feature_names):
        stream = _seed(_seed(seed, _DROPOUT_STREAM[view]), i)
        out[name] = dropout_values(
          tf.convert_to_tensor(features[name]), self.dropout_rate, stream
        )
      views.append(out)
    return views[0], mask1, views[1], mask2
