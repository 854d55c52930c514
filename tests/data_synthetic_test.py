"""Tests of the synthetic generator: determinism, correlations, skew."""

import dataclasses

import numpy as np
import pytest

from tfr_ssl import data
from tfr_ssl.config import DataConfig, SyntheticConfig
from tfr_ssl.data import report, stats, synthetic

SMALL = SyntheticConfig(
  num_items=400, num_users=300, num_interactions=6000, num_topics=4, seed=0
)


@pytest.fixture(scope="module")
def prepared():
  return data.build(DataConfig(synthetic=SMALL, cache_dir="/nonexistent"))


def test_same_seed_same_data_other_seed_other_data():
  a, b = synthetic.generate(SMALL), synthetic.generate(SMALL)
  np.testing.assert_array_equal(
    a.interactions.item_key, b.interactions.item_key
  )
  np.testing.assert_array_equal(
    a.items.columns["tags"].values, b.items.columns["tags"].values
  )
  c = synthetic.generate(dataclasses.replace(SMALL, seed=1))
  assert not np.array_equal(
    a.interactions.item_key[:100], c.interactions.item_key[:100]
  )


def test_schema_and_sizes(prepared):
  item_features = prepared.schema.item_features
  assert len(item_features) >= 6  # id + at least five features
  assert prepared.schema.feature("tags").multi
  assert prepared.num_items == 400
  assert prepared.num_queries == 300
  total = sum(len(s) for s in prepared.splits.values())
  # De-duplicated (user, item) pairs: at most the draws, most of them kept.
  assert 0.5 * 6000 < total <= 6000
  train = prepared.splits["train"]
  pairs = train.query_index.astype(np.int64) * 400 + train.item_index
  assert np.unique(pairs).shape[0] == pairs.shape[0]


def test_correlated_feature_groups(prepared):
  names = [f.name for f in prepared.schema.item_features]
  mi = stats.mutual_information(prepared.items, names)

  def norm(a, b):  # MI as a share of the smaller entropy
    i, j = names.index(a), names.index(b)
    return mi[i, j] / min(mi[i, i], mi[j, j])

  # subcategory determines category exactly.
  assert norm("category", "subcategory") == pytest.approx(1.0, abs=1e-4)
  # The designed links are much stronger than an unrelated pair.
  unrelated = norm("tags", "region")
  assert norm("creator", "category") > unrelated + 0.3
  assert norm("language", "region") > unrelated + 0.3
  assert norm("subcategory", "tags") > unrelated + 0.3


def test_describe_reports_the_dependence_cfm_masks_by(prepared):
  names = [f.name for f in prepared.schema.item_features]
  described = data.describe(prepared)["dependence"]
  assert described["features"] == names
  # The very matrix the model gives CFM (same call, same default seed).
  np.testing.assert_allclose(
    described["matrix"],
    stats.feature_dependence(prepared.items, names),
    atol=1e-6,
  )
  dependence = np.array(described["matrix"])
  category, subcategory = names.index("category"), names.index("subcategory")
  tags, region = names.index("tags"), names.index("region")
  # A designed link stands well above an unrelated pair, which the bias
  # correction brings to about 0.
  assert dependence[category, subcategory] > 0.5
  assert dependence[tags, region] < 0.05
  text = report.format_description(data.describe(prepared))
  assert "dependence between item features, what CFM masks by" in text


def test_popularity_is_skewed(prepared):
  stats = data.describe(prepared)
  assert stats["top10_share"] > 0.3
  assert stats["gini"] > 0.4


def _mutual_information(a, b):
  """Empirical MI (nats) between two integer columns."""
  codes = a.astype(np.int64) * (b.max() + 1) + b
  pairs, counts = np.unique(codes, return_counts=True)
  p_ab = counts / a.shape[0]
  p_a = np.bincount(a) / a.shape[0]
  p_b = np.bincount(b) / a.shape[0]
  a_of, b_of = pairs // (b.max() + 1), pairs % (b.max() + 1)
  return (p_ab * np.log(p_ab / (p_a[a_of] * p_b[b_of]))).sum()


def test_users_have_topic_interests(prepared):
  # Knowing the user tells much about the category of their items: the
  # user-category MI clearly exceeds that of the same interactions with the
  # categories shuffled across users (which keeps popularity and the
  # small-sample bias of the estimate, but no interests).
  train = prepared.splits["train"]
  category = prepared.items["category"][train.item_index]
  shuffled = np.random.default_rng(0).permutation(category)
  gain = _mutual_information(train.query_index, category)
  gain -= _mutual_information(train.query_index, shuffled)
  entropy = stats.mutual_information(prepared.items, ["category"])[0, 0]
  assert gain / entropy > 0.05


def test_timestamps_within_the_year(prepared):
  times = np.concatenate([s.timestamp for s in prepared.splits.values()])
  assert times.min() >= synthetic.START
  assert times.max() <= synthetic.START + synthetic.PERIOD
