"""The embedded synthetic source: items, users and interactions from a seed.

The generative model (documented with its constants in data/README.md):

* Items have correlated features. A creator has a home category and a
  language; an item takes its creator's category (usually) and language
  (usually); its subcategory lies inside its category; its tags come mostly
  from its subcategory's tag pool; its region follows its language.
* Item popularity is Zipf-like over a random ranking of the items.
* Topics link users to items: every subcategory loads on a few latent topics
  (through its category); every user has interests over topics, tilted by
  the user's age bucket, and speaks the language of their country (usually).
* An interaction picks a user (by activity), a topic from the user's
  interests, a subcategory by topic loading times the square root of its
  popularity mass, then an item within the subcategory by popularity,
  preferring the user's language; a small share is drawn by popularity
  alone. So a tail item is chosen for the same feature-level reasons as a
  head item of its subcategory: features generalise to the tail.
* Items are released over the year; interactions happen after release, so a
  temporal split meets genuinely new items.

Everything is vectorised numpy; the same config gives the same data.
"""

from __future__ import annotations

import numpy as np

from tfr_ssl import config as config_lib
from tfr_ssl.config import SyntheticConfig
from tfr_ssl.data.contract import (
  CATEGORICAL,
  ITEM,
  MULTI_CATEGORICAL,
  QUERY,
  Feature,
  Schema,
)
from tfr_ssl.data.raw import Bags, RawData, RawInteractions, RawTable

SCHEMA = Schema(
  features=(
    Feature("item_id", CATEGORICAL, ITEM),
    Feature("category", CATEGORICAL, ITEM),
    Feature("subcategory", CATEGORICAL, ITEM),
    Feature("tags", MULTI_CATEGORICAL, ITEM),
    Feature("creator", CATEGORICAL, ITEM),
    Feature("language", CATEGORICAL, ITEM),
    Feature("region", CATEGORICAL, ITEM),
    Feature("user_id", CATEGORICAL, QUERY),
    Feature("age", CATEGORICAL, QUERY),
    Feature("country", CATEGORICAL, QUERY),
  ),
  item_id="item_id",
  query_id="user_id",
)

SUBCATEGORIES_PER_CATEGORY = 6
TAG_POOL = 6  # tags in each subcategory's pool
MAX_TAGS = 6
ITEMS_PER_CREATOR = 25
NUM_LANGUAGES = 12
NUM_REGIONS = 6
NUM_COUNTRIES = 20
NUM_AGES = 7
P_CREATOR_CATEGORY = 0.8  # item keeps its creator's category
P_CREATOR_LANGUAGE = 0.9  # item keeps its creator's language
P_LANGUAGE_REGION = 0.85  # item region is its language's home region
P_POOL_TAG = 0.8  # a tag comes from the subcategory's pool
P_COUNTRY_LANGUAGE = 0.9  # user speaks the country's language
P_USER_LANGUAGE = 0.7  # an interaction prefers the user's language
P_POPULARITY_ONLY = 0.1  # interactions drawn by popularity alone
AGE_TILT = 0.2  # weight of the age profile in a user's interests
USER_CONCENTRATION = 0.05  # Dirichlet of interests: a user likes few topics
MASS_EXPONENT = 0.5  # damping of subcategory popularity in the topic step
PRIMARY_LOADING = 0.85  # a category's loading on its own topic
START = 1_577_836_800  # 2020-01-01 UTC
PERIOD = 365 * 86_400
CATALOG_SHARE = 0.6  # items released before START


def _zipf(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
  """Zipf-like weights (rank^-exponent) over a random ranking, sum 1."""
  weights = (np.arange(1, n + 1, dtype=np.float64)) ** -exponent
  weights = weights[rng.permutation(n)]
  return weights / weights.sum()


def _draw_rows(cumulative: np.ndarray, rows: np.ndarray, rng) -> np.ndarray:
  """Samples a column per row of a row-stochastic matrix, vectorised.

  `cumulative` is the row-wise cumsum of a [R, K] matrix whose rows sum to 1;
  adding the row index makes the flattened cumsum increasing, so one
  searchsorted over it samples every requested row at once.
  """
  num_rows, k = cumulative.shape
  flat = (cumulative + np.arange(num_rows)[:, None]).ravel()
  target = rows + rng.random(rows.shape[0])
  column = np.searchsorted(flat, target, side="right") - rows * k
  return np.clip(column, 0, k - 1)


def _draw_within(
  cumulative: np.ndarray,
  start: np.ndarray,
  end: np.ndarray,
  rng: np.random.Generator,
) -> np.ndarray:
  """Samples a position in [start, end) by the weights behind `cumulative`.

  `cumulative` is the global cumsum of weights of items sorted by group, so a
  group's items are contiguous and a draw inside it is one searchsorted.
  """
  low = np.where(start > 0, cumulative[np.maximum(start - 1, 0)], 0.0)
  high = cumulative[end - 1]
  target = low + rng.random(start.shape[0]) * (high - low)
  position = np.searchsorted(cumulative, target, side="right")
  return np.clip(position, start, end - 1)


def _labels(prefix: str, values: np.ndarray) -> np.ndarray:
  return np.char.add(prefix, values.astype(str))


def _items(config: SyntheticConfig, sizes: dict, rng: np.random.Generator):
  n = config.num_items
  num_categories = sizes["categories"]
  language_p = _zipf(NUM_LANGUAGES, 1.0, rng)
  language_region = rng.integers(0, NUM_REGIONS, NUM_LANGUAGES)

  creator_p = _zipf(sizes["creators"], 0.8, rng)
  creator_category = rng.integers(0, num_categories, sizes["creators"])
  creator_language = rng.choice(NUM_LANGUAGES, sizes["creators"], p=language_p)
  creator = rng.choice(sizes["creators"], n, p=creator_p)

  category = np.where(
    rng.random(n) < P_CREATOR_CATEGORY,
    creator_category[creator],
    rng.integers(0, num_categories, n),
  )
  subcategory = category * SUBCATEGORIES_PER_CATEGORY + rng.integers(
    0, SUBCATEGORIES_PER_CATEGORY, n
  )
  language = np.where(
    rng.random(n) < P_CREATOR_LANGUAGE,
    creator_language[creator],
    rng.choice(NUM_LANGUAGES, n, p=language_p),
  )
  region = np.where(
    rng.random(n) < P_LANGUAGE_REGION,
    language_region[language],
    rng.integers(0, NUM_REGIONS, n),
  )

  # Tags: 1..MAX_TAGS per item, mostly from the subcategory's pool; pools
  # draw from a Zipf tag vocabulary, so common tags are shared across pools.
  tag_p = _zipf(sizes["tags"], 1.0, rng)
  pools = rng.choice(sizes["tags"], (sizes["subcategories"], TAG_POOL), p=tag_p)
  lengths = np.minimum(1 + rng.poisson(1.5, n), MAX_TAGS)
  owner = np.repeat(np.arange(n), lengths)
  from_pool = pools[subcategory[owner], rng.integers(0, TAG_POOL, owner.size)]
  tags = np.where(
    rng.random(owner.size) < P_POOL_TAG,
    from_pool,
    rng.choice(sizes["tags"], owner.size, p=tag_p),
  )
  columns = {
    "item_id": np.arange(n, dtype=np.int64),
    "category": _labels("cat", category),
    "subcategory": _labels("sub", subcategory),
    "tags": Bags(_labels("tag", tags), lengths.astype(np.int64)),
    "creator": _labels("creator", creator),
    "language": _labels("lang", language),
    "region": _labels("region", region),
  }
  hidden = {
    "subcategory": subcategory,
    "language": language,
    "language_p": language_p,
  }
  return columns, hidden


def _users(config: SyntheticConfig, hidden: dict, rng: np.random.Generator):
  u = config.num_users
  topics = config.num_topics
  age = rng.choice(NUM_AGES, u, p=[0.05, 0.2, 0.3, 0.2, 0.12, 0.08, 0.05])
  country_p = _zipf(NUM_COUNTRIES, 1.0, rng)
  country = rng.choice(NUM_COUNTRIES, u, p=country_p)
  # The first countries cover every language; the rest draw one.
  country_language = np.concatenate(
    [
      np.arange(NUM_LANGUAGES),
      rng.choice(
        NUM_LANGUAGES,
        NUM_COUNTRIES - NUM_LANGUAGES,
        p=hidden["language_p"],
      ),
    ]
  )[rng.permutation(NUM_COUNTRIES)]
  language = np.where(
    rng.random(u) < P_COUNTRY_LANGUAGE,
    country_language[country],
    rng.choice(NUM_LANGUAGES, u, p=hidden["language_p"]),
  )
  age_profile = rng.dirichlet(np.full(topics, 0.5), NUM_AGES)
  interest = (1 - AGE_TILT) * rng.dirichlet(
    np.full(topics, USER_CONCENTRATION), u
  ) + AGE_TILT * age_profile[age]
  columns = {
    "user_id": np.arange(u, dtype=np.int64),
    "age": _labels("age", age),
    "country": _labels("country", country),
  }
  return columns, {"language": language, "interest": interest}


def _topic_loadings(config: SyntheticConfig, sizes: dict, rng) -> np.ndarray:
  """[subcategories, topics]: each category centres on one topic.

  The secondary loadings are sparse (Dirichlet 0.1): with hundreds of
  subcategories, even small dense noise would add up to a large off-topic
  share and drown the user's interests.
  """
  topics = config.num_topics
  num_categories = sizes["categories"]
  primary = np.eye(topics)[np.arange(num_categories) % topics]
  category = PRIMARY_LOADING * primary + (1 - PRIMARY_LOADING) * rng.dirichlet(
    np.full(topics, 0.1), num_categories
  )
  category = np.repeat(category, SUBCATEGORIES_PER_CATEGORY, axis=0)
  noise = rng.dirichlet(np.full(topics, 0.1), sizes["subcategories"])
  return 0.9 * category + 0.1 * noise


def _interactions(config, sizes, items, users, rng):
  n, m = config.num_items, config.num_interactions
  popularity = _zipf(n, config.zipf_exponent, rng)
  subcategory, item_language = items["subcategory"], items["language"]

  # Items sorted by (subcategory, language): each group is contiguous.
  group = subcategory * NUM_LANGUAGES + item_language
  order = np.lexsort((np.arange(n), group))
  cumulative = np.cumsum(popularity[order])
  num_groups = sizes["subcategories"] * NUM_LANGUAGES
  group_end = np.searchsorted(group[order], np.arange(num_groups), "right")
  group_start = np.searchsorted(group[order], np.arange(num_groups), "left")
  sub_start = group_start[::NUM_LANGUAGES]
  sub_end = group_end[NUM_LANGUAGES - 1 :: NUM_LANGUAGES]
  sub_mass = np.bincount(
    subcategory, weights=popularity, minlength=sizes["subcategories"]
  )

  activity = rng.lognormal(0.0, 1.0, config.num_users)
  user = rng.choice(config.num_users, m, p=activity / activity.sum())
  topic = _draw_rows(np.cumsum(users["interest"], axis=1), user, rng)
  # P(subcategory | topic) ~ loading x (popularity mass)^MASS_EXPONENT: the
  # exponent keeps a subcategory holding a blockbuster from drawing users of
  # every topic, so topic affinity, not popularity alone, decides.
  affinity = _topic_loadings(config, sizes, rng).T * sub_mass**MASS_EXPONENT
  affinity /= affinity.sum(axis=1, keepdims=True)
  chosen_sub = _draw_rows(np.cumsum(affinity, axis=1), topic, rng)

  own_group = chosen_sub * NUM_LANGUAGES + users["language"][user]
  use_language = (rng.random(m) < P_USER_LANGUAGE) & (
    group_end[own_group] > group_start[own_group]
  )
  start = np.where(use_language, group_start[own_group], sub_start[chosen_sub])
  end = np.where(use_language, group_end[own_group], sub_end[chosen_sub])
  item = order[_draw_within(cumulative, start, end, rng)]
  by_popularity = rng.random(m) < P_POPULARITY_ONLY
  item[by_popularity] = rng.choice(n, int(by_popularity.sum()), p=popularity)

  # A user interacts with an item at most once (first draw kept).
  _, first = np.unique(user * n + item, return_index=True)
  keep = np.sort(first)
  user, item = user[keep], item[keep]

  release = np.where(
    rng.random(n) < CATALOG_SHARE, START, START + rng.random(n) * PERIOD
  ).astype(np.int64)
  available = release[item]
  timestamp = available + (
    rng.random(item.shape[0]) * (START + PERIOD - available)
  ).astype(np.int64)
  return user, item, timestamp


def generate(config: SyntheticConfig) -> RawData:
  """Generates the synthetic dataset.

  Args:
    config: Sizes, Zipf exponent, topics and seed.

  Returns:
    Raw columns (ids as integers, other values as labels like `cat3`).
  """
  for name in ("num_items", "num_users", "num_interactions", "num_topics"):
    config_lib.check_value(f"data.synthetic.{name}", getattr(config, name))
  rng = np.random.default_rng(config.seed)
  categories = max(2, 2 * config.num_topics)
  sizes = {
    "categories": categories,
    "subcategories": categories * SUBCATEGORIES_PER_CATEGORY,
    "tags": max(16, 2 * categories * SUBCATEGORIES_PER_CATEGORY),
    "creators": max(2, config.num_items // ITEMS_PER_CREATOR),
  }
  item_columns, item_hidden = _items(config, sizes, rng)
  user_columns, user_hidden = _users(config, item_hidden, rng)
  user, item, timestamp = _interactions(
    config, sizes, item_hidden, user_hidden, rng
  )
  return RawData(
    schema=SCHEMA,
    items=RawTable(path="<synthetic items>", columns=item_columns),
    queries=RawTable(path="<synthetic users>", columns=user_columns),
    interactions=RawInteractions(
      path="<synthetic interactions>",
      query_key=user,
      item_key=item,
      weight=None,
      timestamp=timestamp,
      lines=None,
      query_column="user_id",
      item_column="item_id",
    ),
  )
