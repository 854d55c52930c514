"""Tests of the CFM dependence statistics and the splits they give."""

import numpy as np

import tfr_ssl  # noqa: F401
from tfr_ssl import config as config_lib
from tfr_ssl.data import assemble, stats, synthetic
from tfr_ssl.model import augment


def test_independent_high_cardinality_columns_have_no_dependence():
  # 20,000 items, 800 and 400 values drawn independently (the demo's creator
  # and a subcategory-like column). Plug-in MI is biased up by about
  # (800 - 1)(400 - 1) / (2 * 20,000) ~ 8 nats, capped by the entropies, so
  # it reads as strong dependence; the shuffled-column baseline removes it.
  rng = np.random.default_rng(0)
  n = 20_000
  items = {"a": rng.integers(1, 801, n), "b": rng.integers(1, 401, n)}
  raw = stats.mutual_information(items, ["a", "b"])
  assert raw[0, 1] > 1.0
  dep = stats.feature_dependence(items, ["a", "b"])
  assert dep[0, 0] == dep[1, 1] == 1.0
  # Sampling noise of the baseline at this size: well below 0.02.
  assert dep[0, 1] < 0.02


def test_dependent_columns_rank_above_independent_ones():
  rng = np.random.default_rng(1)
  n = 20_000
  a = rng.integers(1, 101, n)
  # b copies a's group (a // 10) 90% of the time: strongly dependent.
  noise = rng.integers(1, 11, n)
  b = np.where(rng.random(n) < 0.9, a // 10 + 1, noise)
  c = rng.integers(1, 101, n)  # independent of both
  copy = a.copy()
  items = {"a": a, "b": b, "c": c, "copy": copy}
  dep = stats.feature_dependence(items, list(items))
  np.testing.assert_allclose(dep, dep.T)
  # A column and its copy: MI = H(a); the baseline (shuffled copy) is the
  # plug-in bias ~ 99 * 99 / 40,000 ~ 0.25 nats of H(a) ~ 4.6, so ~0.95.
  assert dep[0, 3] > 0.9
  assert dep[0, 1] > 0.3
  assert dep[0, 2] < 0.02 and dep[1, 2] < 0.02
  assert dep[0, 1] > 10 * dep[0, 2]


def test_multi_valued_columns_are_scored_too():
  rng = np.random.default_rng(2)
  n = 5_000
  group = rng.integers(1, 21, n)
  # Bags of 2 tags from the group's own pool of 3 (ids 3g..3g+2), or PAD.
  tags = np.stack(
    [group * 3 + rng.integers(0, 3, n), group * 3 + rng.integers(0, 3, n)], 1
  )
  tags[rng.random(n) < 0.2, 1] = -1
  other = np.stack([rng.integers(1, 61, n), rng.integers(1, 61, n)], 1)
  items = {"group": group, "tags": tags, "other": other}
  dep = stats.feature_dependence(items, list(items))
  assert dep[0, 1] > 0.4
  assert dep[0, 2] < 0.03 and dep[1, 2] < 0.03


def test_key_like_features_are_the_near_unique_single_valued_ones():
  n = 1_000
  items = {
    "id": np.arange(1, n + 1),
    "title": np.arange(1, n + 1) // 2 + 1,  # 501 values: 0.5 per item
    "genre": np.arange(n) % 7 + 1,
    "tags": np.stack([np.arange(n) + 1, np.arange(n) + 2], 1),  # bags
  }
  assert stats.key_like_features(items, list(items)) == ["id", "title"]
  assert stats.key_like_features(items, list(items), 0.6) == ["id"]


def test_cfm_on_synthetic_data_recovers_the_generator_groups():
  # The generator (tfr_ssl/data/synthetic.py) makes two groups: category ->
  # subcategory -> tags, and language -> region; a creator carries its
  # category (p = 0.8) and its language (p = 0.9), so it is the bridge.
  # With 6 content features CFM masks the seed + its 2 most dependent
  # partners, so each seed gives one split:
  #   subcategory, tags -> {category, subcategory, tags}
  #   language, region  -> {creator, language, region}
  #   category -> {category, subcategory, creator} (creator before tags)
  #   creator  -> {category, creator, language}
  data = config_lib.DataConfig(
    synthetic=config_lib.SyntheticConfig(
      num_items=4000, num_users=500, num_interactions=20_000
    )
  )
  prepared = assemble.build_prepared(synthetic.generate(data.synthetic), data)
  names = [f.name for f in prepared.schema.item_features]
  dep = stats.feature_dependence(prepared.items, names)
  keys = stats.key_like_features(prepared.items, names)
  assert keys == ["item_id"]
  augmenter = augment.Augmenter(
    names, ["tags"], "cfm", dependence=dep, key_features=keys
  )
  content = np.array(augmenter.candidates)
  splits = set()
  for step in range(200):
    m1, _ = augmenter.masks(1, [0, step])
    masked = m1.numpy()[0][[names.index(n) for n in content]]
    splits.add(frozenset(content[masked]))
  assert splits == {
    frozenset({"category", "subcategory", "tags"}),
    frozenset({"creator", "language", "region"}),
    frozenset({"category", "subcategory", "creator"}),
    frozenset({"category", "creator", "language"}),
  }
