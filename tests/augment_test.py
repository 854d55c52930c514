"""Tests of the two-view augmentations."""

import collections

import numpy as np
import pytest
import tensorflow as tf

import tfr_ssl  # noqa: F401
from tfr_ssl.model import augment

# Dependence between 5 features (symmetric; the diagonal is the largest
# entry of every row, so a ranking that forgot to exclude it would pick the
# seed itself). Masked set of view 1 = seed + its top floor(5/2) - 1 = 1
# partner, so 2 features, as many as RFM masks:
#   seed 0: row (.9, .1, .2, .65) -> {1} -> {0, 1}
#   seed 1: row (.9, .8, .05, .15) -> {0} -> {0, 1}
#   seed 2: row (.1, .8, .4, .6)   -> {1} -> {1, 2}
#   seed 3: row (.2, .05, .4, .7)  -> {4} -> {3, 4}
#   seed 4: row (.65, .15, .6, .7) -> {3} -> {3, 4}
MI = np.array(
  [
    [5.0, 0.9, 0.1, 0.2, 0.65],
    [0.9, 5.0, 0.8, 0.05, 0.15],
    [0.1, 0.8, 5.0, 0.4, 0.6],
    [0.2, 0.05, 0.4, 5.0, 0.7],
    [0.65, 0.15, 0.6, 0.7, 5.0],
  ],
  np.float32,
)
# Probability of each set: the seed is uniform over the 5 features.
CFM_SETS = {(0, 1): 2 / 5, (1, 2): 1 / 5, (3, 4): 2 / 5}


def _masked_set(mask_row):
  return tuple(int(i) for i in np.flatnonzero(mask_row))


@pytest.mark.parametrize("num_features", [2, 5, 6])
def test_rfm_masks_are_complementary_halves(num_features):
  for step in range(20):
    m1, m2 = augment.rfm_masks(4, num_features, seed=[0, step])
    m1, m2 = m1.numpy(), m2.numpy()
    # Complementary: every feature masked in exactly one view.
    np.testing.assert_array_equal(m1 ^ m2, np.ones_like(m1))
    assert (m1.sum(axis=1) == num_features // 2).all()
    # One split per batch.
    assert (m1 == m1[0]).all()


def test_rfm_split_varies_with_the_seed():
  sets = {
    _masked_set(augment.rfm_masks(1, 6, seed=[0, s])[0].numpy()[0])
    for s in range(40)
  }
  # C(6, 3) = 20 possible splits; 40 draws should show many of them.
  assert len(sets) >= 8


def test_cfm_masks_the_seed_and_its_top_partners():
  counts = collections.Counter()
  draws = 500
  for step in range(draws):
    m1, m2 = augment.cfm_masks(3, MI, seed=[7, step])
    m1, m2 = m1.numpy(), m2.numpy()
    masked = _masked_set(m1[0])
    assert masked in CFM_SETS
    np.testing.assert_array_equal(m2, ~m1)
    assert (m1 == m1[0]).all()
    counts[masked] += 1
  # Binomial std of a count: sqrt(500 p (1 - p)) <= 11.2; allow 5 std.
  assert set(counts) == set(CFM_SETS)
  for masked, n in counts.items():
    assert abs(n - draws * CFM_SETS[masked]) < 5 * 11.2


def test_cfm_with_two_features_masks_one_per_view():
  mi = np.array([[1.0, 0.5], [0.5, 1.0]], np.float32)
  m1, m2 = augment.cfm_masks(2, mi, seed=[0, 0])
  assert m1.numpy()[0].sum() == 1 and m2.numpy()[0].sum() == 1
  assert augment.cfm_top_count(2) == 0
  assert augment.cfm_top_count(3) == 0
  assert augment.cfm_top_count(7) == 2


@pytest.mark.parametrize("num_features", [2, 3, 4, 5, 6, 7, 8])
def test_cfm_and_rfm_mask_the_same_number_of_features(num_features):
  rng = np.random.default_rng(num_features)
  dep = rng.random((num_features, num_features)).astype(np.float32)
  dep = (dep + dep.T) / 2
  for step in range(10):
    cfm1, cfm2 = augment.cfm_masks(1, dep, seed=[0, step])
    rfm1, rfm2 = augment.rfm_masks(1, num_features, seed=[0, step])
    # floor(F / 2) in view 1, the complement in view 2, for both.
    assert int(cfm1.numpy().sum()) == int(rfm1.numpy().sum())
    assert int(cfm2.numpy().sum()) == int(rfm2.numpy().sum())
    assert int(cfm1.numpy().sum()) == num_features // 2


def test_random_masking_rate_holds_per_view():
  rate, rows, cols = 0.3, 1000, 4
  m1, m2 = augment.random_masks(rows, cols, rate, seed=[1, 2])
  n = rows * cols
  tolerance = 5 * np.sqrt(rate * (1 - rate) / n)  # 5 binomial std
  for mask in (m1, m2):
    assert abs(mask.numpy().mean() - rate) < tolerance
  # The views draw independently: they agree with prob .3^2 + .7^2 = .58.
  agree = (m1.numpy() == m2.numpy()).mean()
  assert abs(agree - 0.58) < 5 * np.sqrt(0.58 * 0.42 / n)


def test_value_dropout_rate_holds_and_keeps_padding():
  rate = 0.3
  ids = np.tile(np.arange(1, 11, dtype=np.int32), [1000, 1])
  ids[:, 8:] = -1  # two PAD columns
  out = augment.dropout_values(tf.constant(ids), rate, seed=[3, 4]).numpy()
  valid = ids >= 0
  dropped = (out[valid] == -1).mean()
  n = valid.sum()  # 8000 values
  assert abs(dropped - rate) < 5 * np.sqrt(rate * (1 - rate) / n)
  assert (out[~valid] == -1).all()
  kept = out != -1
  np.testing.assert_array_equal(out[kept], ids[kept])


def _augmenter(masking="cfm", **kwargs):
  return augment.Augmenter(
    ["a", "b", "c", "d", "tags"],
    ["tags"],
    masking=masking,
    dropout_rate=0.5,
    dependence=MI,
    **kwargs,
  )


def _batch():
  return {
    "a": tf.constant([1, 2, 3, 4]),
    "b": tf.constant([1, 1, 2, 2]),
    "c": tf.constant([3, 3, 3, 3]),
    "d": tf.constant([0, 1, 0, 1]),
    "tags": tf.constant([[1, 2, 3, -1]] * 4),
  }


def test_masking_and_dropout_combine():
  f1, m1, f2, m2 = _augmenter()(_batch(), seed=[0, 5])
  np.testing.assert_array_equal(m1.numpy(), ~m2.numpy())
  # Single-valued features are untouched; bags lose values independently.
  np.testing.assert_array_equal(f1["a"], _batch()["a"])
  assert not np.array_equal(f1["tags"].numpy(), f2["tags"].numpy())
  assert (f1["tags"].numpy()[:, 3] == -1).all()


def _flatten(views):
  f1, m1, f2, m2 = views
  return [m1, m2, f1["tags"], f2["tags"]]


@pytest.mark.parametrize("masking", augment.MASKINGS)
def test_same_seed_same_views_eager_function_and_dataset(masking):
  augmenter = _augmenter(masking)
  seed = tf.constant([11, 3], tf.int64)
  eager = _flatten(augmenter(_batch(), seed))
  traced = _flatten(tf.function(augmenter)(_batch(), seed))
  data = tf.data.Dataset.from_tensors(_batch()).map(
    lambda b: tuple(_flatten(augmenter(b, seed)))
  )
  mapped = next(iter(data))
  for a, b, c in zip(eager, traced, mapped, strict=True):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
  other = _flatten(augmenter(_batch(), tf.constant([11, 4], tf.int64)))
  if masking != "none":
    assert any(
      not np.array_equal(a, b) for a, b in zip(eager, other, strict=True)
    )


@pytest.mark.parametrize("masking", augment.MASKINGS)
def test_the_id_is_never_visible_in_both_views(masking):
  # "a" is the id: with MI's row 0, CFM would pick it as a partner of "b"
  # if it were a candidate; as a key it only follows the key rule.
  augmenter = _augmenter(masking, key_features=["a"])
  rows = 2000
  batch = {k: tf.repeat(v, rows // 4, axis=0) for k, v in _batch().items()}
  seen1 = []
  for step in range(5):
    _, m1, _, m2 = augmenter(batch, seed=[3, step])
    m1, m2 = m1.numpy(), m2.numpy()
    # Column 0 is the id: masked in exactly one view per row.
    np.testing.assert_array_equal(m1[:, 0] ^ m2[:, 0], np.ones(rows, bool))
    seen1.append(~m1[:, 0])
  # The view that sees it is a fair coin per row: 10,000 draws, std 0.005.
  assert abs(np.mean(seen1) - 0.5) < 0.025
  if masking in ("rfm", "cfm"):
    # Halves of the 4 content features: 2 masked in each view.
    assert (m1[:, 1:].sum(axis=1) == 2).all()
    np.testing.assert_array_equal(m1[:, 1:], ~m2[:, 1:])


def test_cfm_never_uses_a_key_as_seed_or_partner():
  augmenter = _augmenter("cfm", key_features=["a"])
  # Content features b, c, d, tags (rows/cols 1..4 of MI); 4 // 2 = 2 masked:
  #   seed b: (.8, .05, .15) -> c -> {b, c};  seed c: (.8, .4, .6) -> b
  #   seed d: (.05, .4, .7) -> tags -> {d, tags};  seed tags: -> d.
  # Without the key rule seed b would take a (0.9) as its partner.
  splits = set()
  for step in range(100):
    _, m1, _, _ = augmenter(_batch(), seed=[0, step])
    splits.add(_masked_set(m1.numpy()[0][1:]))
  assert splits == {(0, 1), (2, 3)}


def test_key_mode_both_masks_the_id_in_both_views():
  augmenter = _augmenter("rfm", key_features=["a"], key_mode="both")
  _, m1, _, m2 = augmenter(_batch(), seed=[0, 1])
  assert m1.numpy()[:, 0].all() and m2.numpy()[:, 0].all()


def test_bad_settings_are_clear_errors():
  with pytest.raises(ValueError, match="masking must be one of"):
    augment.Augmenter(["a", "b"], masking="half")
  with pytest.raises(ValueError, match="key_mode must be one of"):
    augment.Augmenter(["a", "b"], masking="rfm", key_mode="two")
  with pytest.raises(ValueError, match="needs the feature dependence"):
    augment.Augmenter(["a", "b"], masking="cfm")
  with pytest.raises(ValueError, match=r"is \(3, 3\), expected \(2, 2\)"):
    augment.Augmenter(["a", "b"], masking="cfm", dependence=np.eye(3))
  with pytest.raises(ValueError, match="at least 2 content item features"):
    augment.Augmenter(["a"], masking="rfm")
  with pytest.raises(ValueError, match="at least 2 content item features"):
    augment.Augmenter(["id", "a"], masking="rfm", key_features=["id"])
  with pytest.raises(ValueError, match="Key features not in the list"):
    augment.Augmenter(["a", "b"], masking="rfm", key_features=["id"])
