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
  - The view that sees the item id (and any key-like feature) is drawn per
    example, so within a batch both views carry id-less items.

Only content features are masked by the masking strategy; the item id and
key-like features (`tfr_ssl.data.stats.key_like_features`) are handled by
one rule for every strategy: never visible in both views.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

from tfr_ssl import config as config_lib
from tfr_ssl.data.contract import PAD

MASKINGS = ("none", "random", "rfm", "cfm")
# The maskings that split the content features into two halves.
HALF_MASKINGS = ("rfm", "cfm")
KEY_MODES = ("one_view", "both")

# Offsets folded into the seed so every random draw of a step is independent.
_MASK_STREAM = 1
_DROPOUT_STREAM = {1: 2, 2: 3}
_KEY_STREAM = 4


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


def check_two_halves(
  what: str,
  content: Sequence[str] | int,
  keys: Sequence[str] = (),
  error: type[ValueError] = ValueError,
) -> None:
  """The one rule: RFM and CFM need at least 2 content features to split.

  Args:
    what: Who asks, first word of the message (`"RFM"`, `"ssl.masking='cfm'"`).
    content: The content (masking candidate) feature names, or their count.
    keys: The id and key-like features left out of the content, if known.
    error: The exception class to raise (a subclass of ValueError).
  """
  count = content if isinstance(content, int) else len(content)
  if count >= 2:
    return
  got = content if isinstance(content, int) else list(content)
  not_keys = (
    f" (not the id or key-like features {sorted(keys)})" if keys else ""
  )
  raise error(
    f"{what} needs at least 2 content item features{not_keys}, got {got}."
  )


def half_count(num_features: int) -> int:
  """Features masked in view 1 by RFM and CFM: floor(F / 2)."""
  return num_features // 2


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
  check_two_halves("RFM", num_features)
  scores = tf.random.stateless_uniform(
    [num_features], seed=_seed(seed, _MASK_STREAM)
  )
  # rank of each feature in a random order; the first half goes to view 1.
  rank = tf.argsort(tf.argsort(scores))
  masked = rank < half_count(num_features)
  view1 = tf.broadcast_to(masked, [batch_size, num_features])
  return view1, tf.logical_not(view1)


def cfm_top_count(num_features: int) -> int:
  """Partners masked with the CFM seed: floor(F/2) - 1.

  Seed plus partners make `half_count(F)` features, the number RFM masks,
  so the two compare fairly; F = 2 or 3 masks the seed alone.
  """
  return max(0, half_count(num_features) - 1)


def cfm_masks(
  batch_size: tf.Tensor | int, dependence: tf.Tensor, seed
) -> tuple[tf.Tensor, tf.Tensor]:
  """Correlated feature masking (CFM).

  Per batch a seed feature `s` is drawn uniformly; view 1 masks `s` and the
  `cfm_top_count(F)` other features most dependent on `s` (ties go to the
  lower index). View 2 masks exactly the complement. Masking correlated
  features together stops the model from reading a masked feature off an
  unmasked twin.

  Args:
    batch_size: Rows B.
    dependence: float `[F, F]` dependence between the candidate features
      (`tfr_ssl.data.stats.feature_dependence`; the diagonal is ignored).
    seed: int `[2]` seed.

  Returns:
    bool `[B, F]` masks (view 1, view 2) with `m1 == ~m2`.
  """
  dep = tf.convert_to_tensor(dependence, tf.float32)
  num_features = dep.shape[0]
  if num_features is None or dep.shape != (num_features, num_features):
    raise ValueError(f"CFM needs a square [F, F] matrix, got {dep.shape}.")
  check_two_halves("CFM", num_features)
  top = cfm_top_count(num_features)
  anchor = tf.random.stateless_uniform(
    [], seed=_seed(seed, _MASK_STREAM), maxval=num_features, dtype=tf.int32
  )
  row = tf.gather(dep, anchor)
  row = tf.where(tf.range(num_features) == anchor, -np.inf, row)
  _, partners = tf.math.top_k(row, k=top)
  chosen = tf.concat([anchor[tf.newaxis], partners], axis=0)
  masked = tf.reduce_any(
    tf.one_hot(chosen, num_features, on_value=True, off_value=False), axis=0
  )
  view1 = tf.broadcast_to(masked, [batch_size, num_features])
  return view1, tf.logical_not(view1)


def key_masks(
  batch_size: tf.Tensor | int, num_keys: int, mode: str, seed
) -> tuple[tf.Tensor, tf.Tensor]:
  """Masks of the key features (the item id and key-like features).

  `one_view`: per row, a fair coin picks the view that sees the keys; the
  other view has them masked. `both`: masked in both views. Either way a
  key is never visible in both views: otherwise the two views share an
  identifier and the contrastive task is solved by a lookup.

  Returns:
    bool `[B, K]` masks (view 1, view 2).
  """
  if mode == "both":
    masked = tf.ones([batch_size, num_keys], tf.bool)
    return masked, masked
  coin = tf.random.stateless_uniform(
    [batch_size, 1], seed=_seed(seed, _KEY_STREAM)
  )
  view1 = tf.broadcast_to(coin < 0.5, [batch_size, num_keys])
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

  The item features fall in two groups:
    - content features (candidates): masked by `masking` (`random`: each
      independently; `rfm`, `cfm`: floor(C/2) of the C candidates in view 1,
      the rest in view 2);
    - key features (the item id and key-like features): never a candidate;
      visible in exactly one view, picked per row at random (`key_mode =
      "one_view"`), or masked in both (`"both"`), whatever the masking.

  Args:
    feature_names: Item features, in the encoder's order (mask columns).
    multi_feature_names: The multi-valued ones (subject to value dropout).
    masking: One of `MASKINGS`.
    mask_rate: Rate of `random` masking.
    dropout_rate: Rate of value dropout in multi-valued features (0 = off).
    dependence: `[F, F]` dependence between all item features (in
      `feature_names` order; rows of key features are ignored), required
      for `cfm`.
    key_features: The key features (a subset of `feature_names`).
    key_mode: One of `KEY_MODES`.

  Example:
    >>> augmenter = Augmenter(["id", "a", "tags"], ["tags"], "rfm",
    ...                       key_features=["id"])
    >>> f1, m1, f2, m2 = augmenter(batch, seed=tf.constant([0, step]))
  """

  def __init__(
    self,
    feature_names: Sequence[str],
    multi_feature_names: Sequence[str] = (),
    masking: str = "cfm",
    mask_rate: float = 0.5,
    dropout_rate: float = 0.0,
    dependence: np.ndarray | None = None,
    key_features: Sequence[str] = (),
    key_mode: str = "one_view",
  ):
    if masking not in MASKINGS:
      raise ValueError(
        f"masking must be one of {list(MASKINGS)}, got {masking!r}."
      )
    if key_mode not in KEY_MODES:
      raise ValueError(
        f"key_mode must be one of {list(KEY_MODES)}, got {key_mode!r}."
      )
    for label, names in (
      ("Multi-valued features", multi_feature_names),
      ("Key features", key_features),
    ):
      unknown = sorted(set(names) - set(feature_names))
      if unknown:
        raise ValueError(f"{label} not in the list: {unknown}.")
    # At rate 1 both views lose every content feature (or every value):
    # nothing is left to contrast, so 1 is out of range (config.RATE).
    config_lib.check_value("ssl.mask_rate", mask_rate)
    config_lib.check_value("ssl.dropout_rate", dropout_rate)
    self.feature_names = list(feature_names)
    self.multi_feature_names = list(multi_feature_names)
    self.key_features = [n for n in self.feature_names if n in key_features]
    self.candidates = [n for n in self.feature_names if n not in key_features]
    self.masking = masking
    self.key_mode = key_mode
    self.mask_rate = float(mask_rate)
    self.dropout_rate = float(dropout_rate)
    if masking in HALF_MASKINGS:
      check_two_halves(masking, self.candidates, self.key_features)
    positions = {n: i for i, n in enumerate(self.feature_names)}
    self._candidate_columns = [positions[n] for n in self.candidates]
    self._key_columns = [positions[n] for n in self.key_features]
    self.dependence = None
    if masking == "cfm":
      if dependence is None:
        raise ValueError("cfm masking needs the feature dependence matrix.")
      full = np.asarray(dependence, np.float32)
      size = len(self.feature_names)
      if full.shape != (size, size):
        raise ValueError(
          f"The dependence matrix is {full.shape}, expected ({size}, "
          f"{size}) for item features {self.feature_names}."
        )
      columns = self._candidate_columns
      self.dependence = full[np.ix_(columns, columns)]

  def masks(self, batch_size, seed) -> tuple[tf.Tensor, tf.Tensor]:
    """The two views' bool `[B, F]` masks, in `feature_names` order."""
    num = len(self.candidates)
    if self.masking == "random":
      content = random_masks(batch_size, num, self.mask_rate, seed)
    elif self.masking == "rfm":
      content = rfm_masks(batch_size, num, seed)
    elif self.masking == "cfm":
      content = cfm_masks(batch_size, self.dependence, seed)
    else:
      none = tf.zeros([batch_size, num], tf.bool)
      content = none, none
    keys = key_masks(batch_size, len(self.key_features), self.key_mode, seed)
    # Scatter the candidate and key columns back to the encoder's order.
    order = np.argsort(self._candidate_columns + self._key_columns)
    return tuple(
      tf.gather(tf.concat([c, k], axis=1), order, axis=1)
      for c, k in zip(content, keys, strict=True)
    )

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
