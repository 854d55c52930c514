"""Tests of the MovieLens source on tiny ML-1M and ML-100K files."""

import os

import numpy as np
import pytest

from tfr_ssl import data
from tfr_ssl.config import DataConfig
from tfr_ssl.data import movielens, stats
from tfr_ssl.data.contract import PAD

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get(
  "TFR_SSL_SHARED_DATA",
  os.path.join(os.path.dirname(REPO), "shared", "data"),
)

MOVIES_1M = (
  "1::Toy Story (1995)::Animation|Children's|Comedy\n"
  "2::Heat (1995)::Action|Crime|Thriller\n"
  "3::Cit\xe9 des enfants perdus, La (1995)::Adventure|Sci-Fi\n"
  "4::Metropolis (1926)::Sci-Fi\n"
)
USERS_1M = "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n"
RATINGS_1M = (
  "1::1::5::978300760\n"
  "1::2::3::978300100\n"
  "1::3::4::978300000\n"
  "2::1::4::978200000\n"
  "2::4::5::978100000\n"
  "3::2::4::978000000\n"
)


def write_1m(path, ratings=RATINGS_1M, **overrides):
  os.makedirs(path, exist_ok=True)
  files = {
    "movies.dat": MOVIES_1M,
    "users.dat": USERS_1M,
    "ratings.dat": ratings,
    **overrides,
  }
  for name, text in files.items():
    if text is not None:
      with open(os.path.join(path, name), "wb") as f:
        f.write(text.encode("iso-8859-1"))
  return str(path)


def config(data_dir, tmp_path, **kwargs):
  return DataConfig(
    source="movielens",
    data_dir=data_dir,
    cache_dir=str(tmp_path / "cache"),
    validation_fraction=0.0,
    test_fraction=0.0,
    **kwargs,
  )


def test_ml1m_features_and_positives(tmp_path):
  prepared = data.build(config(write_1m(tmp_path / "ml"), tmp_path))
  assert movielens.detect(str(tmp_path / "ml")) == "ml-1m"
  vocab = prepared.vocabularies
  # ratings >= 4: (1,1), (1,3), (2,1), (2,4), (3,2) -> 5 positives.
  train = prepared.splits["train"]
  assert len(train) == 5
  assert train.timestamp is not None
  assert vocab["movie_id"] == ["1", "2", "3", "4"]
  assert vocab["decade"] == ["1990s", "1920s"]
  assert sorted(vocab["year"]) == ["1926", "1995"]
  # Title words, lowercased, without the year; non-ASCII letters kept.
  title = prepared.items["title"]
  words = [[vocab["title"][i - 1] for i in row if i != PAD] for row in title]
  assert words[0] == ["toy", "story"]
  assert words[2] == ["cité", "des", "enfants", "perdus", "la"]
  genres = prepared.items["genres"]
  assert [vocab["genres"][i - 1] for i in genres[3] if i != PAD] == ["Sci-Fi"]
  assert vocab["zip_prefix"] == ["4", "5", "7"]  # 48067, 55117, 70072
  assert sorted(vocab["age"]) == ["1", "25", "56"]


def test_ml1m_history_order_uses_timestamps(tmp_path):
  prepared = data.build(config(write_1m(tmp_path / "ml"), tmp_path))
  train = prepared.splits["train"]
  pairs = set(
    zip(
      train.query_index.tolist(),
      train.item_index.tolist(),
      train.prev_item_index.tolist(),
      strict=True,
    )
  )
  # user 1 (row 0): movie 3 (t=978300000) before movie 1 (t=978300760).
  assert (0, 0, 2) in pairs


def test_ml1m_three_fields_have_no_timestamps(tmp_path):
  ratings = "1::1::5\n1::2::4\n2::1::4\n"
  ml = write_1m(tmp_path / "ml", ratings=ratings)
  prepared = data.build(config(ml, tmp_path))
  assert prepared.splits["train"].timestamp is None
  # Without timestamps, history follows file order: user 1 saw 1 then 2.
  np.testing.assert_array_equal(
    prepared.splits["train"].prev_item_index, [PAD, 0, PAD]
  )
  with pytest.raises(data.DataError, match="temporal split needs timestamps"):
    data.build(config(ml, tmp_path, split="temporal"))


def test_min_rating(tmp_path):
  ml = write_1m(tmp_path / "ml")
  assert (
    len(data.build(config(ml, tmp_path, min_rating=5)).splits["train"]) == 2
  )
  with pytest.raises(data.DataError, match="no rating is >= min_rating"):
    data.build(config(ml, tmp_path, min_rating=6))


def write_100k(path, **overrides):
  os.makedirs(path, exist_ok=True)
  flags = ["0"] * 19
  drama = list(flags)
  drama[8] = "1"
  comedy_action = list(flags)
  comedy_action[1] = comedy_action[5] = "1"
  files = {
    "u.data": "1\t1\t5\t881250949\n2\t2\t4\t881250950\n1\t2\t2\t881250951\n",
    "u.item": (
      "1|Some Drama (1994)|01-Jan-1994||http://x|" + "|".join(drama) + "\n"
      "2|unknown||||" + "|".join(comedy_action) + "\n"
    ),
    "u.user": "1|24|M|technician|85711\n2|53|F|other|T8H1N\n",
    **overrides,
  }
  for name, text in files.items():
    if text is not None:
      with open(os.path.join(path, name), "w", encoding="iso-8859-1") as f:
        f.write(text)
  return str(path)


def test_ml100k(tmp_path):
  ml = write_100k(tmp_path / "ml")
  assert movielens.detect(ml) == "ml-100k"
  prepared = data.build(config(ml, tmp_path))
  vocab = prepared.vocabularies
  assert len(prepared.splits["train"]) == 2  # the rating 2 is dropped
  genres = [
    sorted(vocab["genres"][i - 1] for i in row if i != PAD)
    for row in prepared.items["genres"]
  ]
  assert genres == [["Drama"], ["Action", "Comedy"]]
  # Item 2 has neither a year in its title nor a release date: OOV.
  np.testing.assert_array_equal(prepared.items["year"], [1, 0])
  # Ages 24 -> bucket 18, 53 -> bucket 50 (ML-1M codes).
  ages = [vocab["age"][i - 1] for i in prepared.queries["age"]]
  assert ages == ["18", "50"]
  assert [
    vocab["zip_prefix"][i - 1] for i in prepared.queries["zip_prefix"]
  ] == [
    "8",
    "T",
  ]


BAD = {
  # name: (overrides, file, line, column, message fragment)
  "malformed ratings line": (
    {"ratings.dat": "1::1::5::1\n1::2\n"},
    "ratings.dat",
    2,
    None,
    "expected 4 '::'-separated fields",
  ),
  "non-numeric rating": (
    {"ratings.dat": "1::1::5::1\n1::2::five::2\n"},
    "ratings.dat",
    2,
    "rating",
    "'five' is not a number",
  ),
  "too few movie fields": (
    {"movies.dat": "1::Toy Story (1995)\n"},
    "movies.dat",
    1,
    "genres",
    "expected 3 '::'-separated fields",
  ),
  "movie id not an integer": (
    {"movies.dat": MOVIES_1M + "x5::Up (2009)::Comedy\n"},
    "movies.dat",
    5,
    "movie_id",
    "'x5' is not an integer",
  ),
  "duplicate movie": (
    {"movies.dat": MOVIES_1M + "2::Heat again (1995)::Action\n"},
    "movies.dat",
    5,
    "movie_id",
    "duplicate id '2'",
  ),
  "rating of unknown movie": (
    {"ratings.dat": RATINGS_1M + "3::99::5::978000001\n"},
    "ratings.dat",
    7,
    "movie_id",
    "'99' is not an id in movies.dat",
  ),
  "missing users": ({"users.dat": None}, "users.dat", None, None, "not found"),
  "empty movies": ({"movies.dat": "\n"}, "movies.dat", None, None, "empty"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input(tmp_path, case):
  overrides, name, line, column, fragment = BAD[case]
  ml = write_1m(tmp_path / "ml", **overrides)
  with pytest.raises(data.DataError) as error:
    data.load(config(ml, tmp_path))
  assert fragment in str(error.value)
  assert error.value.path == os.path.join(ml, name)
  assert (error.value.line, error.value.column) == (line, column)
  cache = tmp_path / "cache"
  assert not cache.exists() or not any(cache.rglob("*"))


def test_not_a_movielens_directory(tmp_path):
  with pytest.raises(data.DataError, match="not a MovieLens directory"):
    movielens.detect(str(tmp_path))


@pytest.mark.skipif(
  not os.path.exists(os.path.join(SHARED, "ml-100k", "u.data")),
  reason="real ML-100K not available",
)
def test_real_ml100k(tmp_path):
  cfg = DataConfig(
    source="movielens",
    data_dir=os.path.join(SHARED, "ml-100k"),
    cache_dir=str(tmp_path),
    split="temporal",
    # The splits as the file gives them (held-out users are checked in
    # tests/heldout_test.py).
    heldout_users=0.0,
  )
  prepared = data.build(cfg)
  assert prepared.num_items == 1682
  assert prepared.num_queries == 943
  # 55,375 of the 100,000 ratings are >= 4; 80/10/10 by time.
  assert sum(len(s) for s in prepared.splits.values()) == 55_375
  assert len(prepared.splits["test"]) == 5_538
  assert len(prepared.vocabularies["genres"]) == 19
  assert data.describe(prepared)["cold_test_items"] > 0
  # year determines decade: MI(year, decade) = H(decade).
  names = [f.name for f in prepared.schema.item_features]
  mi = stats.mutual_information(prepared.items, names)
  year, decade = names.index("year"), names.index("decade")
  assert mi[year, decade] == pytest.approx(mi[decade, decade], rel=1e-4)
