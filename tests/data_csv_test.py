"""Tests of the CSV source: schema.json, parsing, and every bad input."""

import json
import os

import numpy as np
import pytest

from tfr_ssl import data
from tfr_ssl.config import DataConfig
from tfr_ssl.data import csv_source
from tfr_ssl.data.contract import PAD

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCHEMA = {
  "item_id": "item",
  "query_id": "user",
  "features": [
    {"name": "item", "kind": "categorical", "role": "item"},
    {"name": "genre", "kind": "categorical", "role": "item"},
    {"name": "tags", "kind": "multi_categorical", "role": "item"},
    {"name": "user", "kind": "categorical", "role": "query"},
    {"name": "age", "kind": "categorical", "role": "query"},
  ],
  "interactions": {"weight": "w", "timestamp": "t"},
}
FILES = {
  "items.csv": "item,genre,tags,extra\n"
  "i1,rock,loud|live,x\n"
  "i2,jazz,,y\n"
  "i3,rock,live,z\n",
  "users.csv": "user,age\nu1,20s\nu2,30s\n",
  "interactions.csv": "user,item,w,t\n"
  "u1,i1,1.0,100\n"
  "u1,i3,2.5,50\n"
  "u2,i2,1.0,300\n"
  "u2,i1,1.0,200\n",
}


def write_dir(path, schema=None, **overrides):
  """Writes a CSV dataset; overrides map file name -> text (None = omit)."""
  os.makedirs(path, exist_ok=True)
  files = {"schema.json": json.dumps(schema or SCHEMA, indent=2), **FILES}
  for name, text in {**files, **overrides}.items():
    if text is None:
      continue
    mode = "wb" if isinstance(text, bytes) else "w"
    with open(os.path.join(path, name), mode) as f:
      f.write(text)
  return path


def config(tmp_path, **kwargs):
  return DataConfig(
    source="csv",
    data_dir=str(tmp_path / "raw"),
    cache_dir=str(tmp_path / "cache"),
    validation_fraction=0.0,
    test_fraction=0.25,
    **kwargs,
  )


def test_reads_features_weights_and_timestamps(tmp_path):
  write_dir(tmp_path / "raw")
  prepared = data.build(config(tmp_path))
  assert [f.name for f in prepared.schema.item_features] == [
    "item",
    "genre",
    "tags",
  ]
  assert prepared.vocabularies["item"] == ["i1", "i2", "i3"]
  assert prepared.vocabularies["genre"] == ["rock", "jazz"]
  assert prepared.vocabularies["tags"] == ["live", "loud"]
  np.testing.assert_array_equal(prepared.items["genre"], [1, 2, 1])
  # i1: loud|live -> [2, 1]; i2: empty bag -> [OOV]; i3: live -> [1].
  np.testing.assert_array_equal(
    prepared.items["tags"], [[2, 1], [0, PAD], [1, PAD]]
  )
  np.testing.assert_array_equal(prepared.queries["age"], [1, 2])
  assert len(prepared.splits["train"]) == 3
  assert len(prepared.splits["test"]) == 1
  weights = np.concatenate(
    [prepared.splits[s].weight for s in ("train", "test")]
  )
  assert sorted(weights.tolist()) == [1.0, 1.0, 1.0, 2.5]
  assert weights.dtype == np.float32
  timestamps = np.concatenate(
    [prepared.splits[s].timestamp for s in ("train", "test")]
  )
  assert sorted(timestamps.tolist()) == [50, 100, 200, 300]


def test_iso_timestamps(tmp_path):
  interactions = (
    "user,item,w,t\nu1,i1,1,2020-01-01\nu2,i2,1,2020-01-02T00:00:01\n"
  )
  write_dir(tmp_path / "raw", **{"interactions.csv": interactions})
  cfg = config(tmp_path)
  cfg.test_fraction = 0.0
  train = data.build(cfg).splits["train"]
  # 2020-01-01 is 1577836800 s after the epoch; one day and a second later:
  np.testing.assert_array_equal(train.timestamp, [1577836800, 1577923201])


def test_previous_item_follows_timestamps(tmp_path):
  write_dir(tmp_path / "raw")
  cfg = config(tmp_path)
  cfg.test_fraction = 0.0
  train = data.build(cfg).splits["train"]
  previous = dict(
    zip(
      zip(train.query_index.tolist(), train.item_index.tolist(), strict=True),
      train.prev_item_index.tolist(),
      strict=True,
    )
  )
  # u1 (row 0): i3 @50 then i1 @100; u2 (row 1): i1 @200 then i2 @300.
  assert previous == {(0, 0): 2, (0, 2): PAD, (1, 0): PAD, (1, 1): 0}


EIGHT_ITEMS = "item,genre,tags\n" + "".join(f"i{k},g,t\n" for k in range(1, 9))
# Row r (0-based) is item i{r+1} (corpus row r) at time r + 1, except row 7
# at time 0 (before every other row).
EIGHT_INTERACTIONS = (
  "user,item,w,t\n"
  "u1,i1,1,1\n"  # 0
  "u1,i2,1,2\n"  # 1
  "u1,i3,1,3\n"  # 2
  "u2,i4,1,4\n"  # 3
  "u2,i5,1,5\n"  # 4
  "u1,i6,1,6\n"  # 5
  "u2,i7,1,7\n"  # 6
  "u1,i8,1,0\n"  # 7
)


def _eight(tmp_path, train_fraction=1.0, schema=None, interactions=None):
  write_dir(
    tmp_path / "raw",
    schema=schema,
    **{
      "items.csv": EIGHT_ITEMS,
      "interactions.csv": interactions or EIGHT_INTERACTIONS,
    },
  )
  cfg = config(tmp_path, train_fraction=train_fraction)
  cfg.validation_fraction = 0.25
  return data.build(cfg)


def test_previous_items_are_computed_within_each_split(tmp_path):
  splits = _eight(tmp_path).splits
  # The random split of 8 rows with seed 0 (pinned by the timestamps):
  # train rows [2, 3, 4, 6], validation [0, 5], test [1, 7].
  assert splits["train"].timestamp.tolist() == [3, 4, 5, 7]
  assert splits["validation"].timestamp.tolist() == [1, 6]
  assert splits["test"].timestamp.tolist() == [2, 0]
  # Whole history: u1 is rows 7 (t=0), 0, 1, 2, 5; u2 is rows 3, 4, 6. That
  # gives train [i2, PAD, i4, i5], validation [i8, i3], test [i1, PAD]: row
  # 2's i2 is a test item, row 0's i8 a test item, row 5's i3 a training
  # item, row 1's i1 a validation item. Within each split:
  #   train: u1 row 2 -> PAD; u2 rows 3, 4, 6 -> PAD, i4, i5
  #   validation: u1 rows 0, 5 -> PAD, i1
  #   test: u1 row 7 (t=0) then row 1 (t=2) -> row 1: i8, row 7: PAD
  # Items as corpus rows: i{k} is row k - 1.
  assert splits["train"].prev_item_index.tolist() == [PAD, PAD, 3, 4]
  assert splits["validation"].prev_item_index.tolist() == [PAD, 0]
  assert splits["test"].prev_item_index.tolist() == [7, PAD]


def test_previous_items_of_train_use_only_the_kept_rows(tmp_path):
  splits = _eight(tmp_path, train_fraction=0.5).splits
  # train_fraction 0.5 keeps train rows [3, 6] (u2's i4 and i7); the dropped
  # row 4 (i5, the whole-split answer for row 6) is nobody's previous item.
  assert splits["train"].timestamp.tolist() == [4, 7]
  assert splits["train"].prev_item_index.tolist() == [PAD, 3]
  # Held-out splits are unchanged by the subsample.
  assert splits["validation"].prev_item_index.tolist() == [PAD, 0]
  assert splits["test"].prev_item_index.tolist() == [7, PAD]


SEED_SCHEMA = dict(
  SCHEMA, interactions={"weight": "w", "timestamp": "t", "query_item": "seed"}
)
# EIGHT_INTERACTIONS with a query-item column (an empty cell: no query item).
SEED_INTERACTIONS = (
  "user,item,w,t,seed\n"
  "u1,i1,1,1,i5\n"  # 0
  "u1,i2,1,2,\n"  # 1
  "u1,i3,1,3,i1\n"  # 2
  "u2,i4,1,4,i3\n"  # 3
  "u2,i5,1,5,\n"  # 4
  "u1,i6,1,6,i8\n"  # 5
  "u2,i7,1,7,i2\n"  # 6
  "u1,i8,1,0,i7\n"  # 7
)


def test_query_item_column_gives_the_item_to_item_queries(tmp_path):
  prepared = _eight(
    tmp_path, schema=SEED_SCHEMA, interactions=SEED_INTERACTIONS
  )
  assert prepared.schema.query_item == "seed"
  assert prepared.item_to_item_source == "column"
  splits = prepared.splits
  # Same split as above: train rows [2, 3, 4, 6], validation [0, 5], test
  # [1, 7]. Each row's query is its seed cell (i{k} is corpus row k - 1,
  # empty is PAD), not its previous item:
  #   train: i1, i3, -, i2 -> [0, 2, PAD, 1]
  #   validation: i5, i8   -> [4, 7]
  #   test: -, i7          -> [PAD, 6]
  assert splits["train"].timestamp.tolist() == [3, 4, 5, 7]
  assert splits["train"].prev_item_index.tolist() == [0, 2, PAD, 1]
  assert splits["validation"].prev_item_index.tolist() == [4, 7]
  assert splits["test"].prev_item_index.tolist() == [PAD, 6]
  assert splits["train"].prev_item_index.dtype == np.int32


def test_session_logs_use_previous_items(tmp_path):
  prepared = _eight(tmp_path)
  assert prepared.schema.query_item is None
  assert prepared.item_to_item_source == "previous_item"


def _query_item_schema_error(tmp_path, query_item, **interactions):
  columns = {"weight": "w", "timestamp": "t", **interactions}
  schema = dict(SCHEMA, interactions={**columns, "query_item": query_item})
  write_dir(tmp_path / "raw", schema=schema)
  with pytest.raises(data.DataError) as error:
    data.build(config(tmp_path))
  text = json.dumps(schema, indent=2)
  line = text[: text.index('"query_item"')].count("\n") + 1
  assert error.value.path == str(tmp_path / "raw" / "schema.json")
  assert error.value.line == line
  assert error.value.column == "query_item"
  return str(error.value)


@pytest.mark.parametrize(
  "query_item,interactions,fragment",
  [
    # The item id's own column (interactions.item defaults to item_id).
    ("item", {}, "is also the interactions.item column"),
    # The item column under another name.
    ("product", {"item": "product"}, "is also the interactions.item column"),
    ("user", {}, "is also the interactions.query column"),
    ("t", {}, "is also the interactions.timestamp column"),
    ("w", {}, "is also the interactions.weight column"),
    # A declared item feature (the item id feature when the item column has
    # another name) or query feature.
    ("genre", {}, "is also declared as a feature"),
    ("item", {"item": "product"}, "is also declared as a feature"),
    ("age", {}, "is also declared as a feature"),
    ("", {}, "must be a non-empty string"),
  ],
)
def test_ambiguous_query_item_column_is_refused(
  tmp_path, query_item, interactions, fragment
):
  message = _query_item_schema_error(tmp_path, query_item, **interactions)
  assert fragment in message
  if fragment.startswith("is also"):
    assert f"ambiguous schema: interactions.query_item {query_item!r}" in (
      message
    )


def test_without_users_csv_queries_come_from_interactions(tmp_path):
  schema = dict(SCHEMA, features=SCHEMA["features"][:4])
  write_dir(tmp_path / "raw", schema=schema, **{"users.csv": None})
  prepared = data.build(config(tmp_path))
  assert prepared.vocabularies["user"] == ["u1", "u2"]
  assert prepared.num_queries == 2


def test_embedded_example_prepares(tmp_path):
  cfg = DataConfig(
    source="csv",
    data_dir=os.path.join(REPO, "data", "example"),
    cache_dir=str(tmp_path),
    split="temporal",
  )
  prepared = data.build(cfg)
  assert prepared.num_items == 12
  assert len(prepared.schema.item_features) == 5
  test_time = prepared.splits["test"].timestamp.min()
  assert prepared.splits["train"].timestamp.max() <= test_time


def _schema_with(**feature_changes):
  features = [dict(f) for f in SCHEMA["features"]]
  features[1].update(feature_changes)
  return dict(SCHEMA, features=features)


BAD_INPUTS = {
  # name: (overrides, file, line, column, message fragment)
  "missing file": (
    {"items.csv": None},
    "items.csv",
    None,
    None,
    "file not found",
  ),
  "missing column": (
    {"items.csv": "item,tags\ni1,a\n"},
    "items.csv",
    1,
    "genre",
    "missing column",
  ),
  "empty file": ({"users.csv": ""}, "users.csv", None, None, "empty"),
  "header only": (
    {"interactions.csv": "user,item,w,t\n"},
    "interactions.csv",
    1,
    None,
    "no data rows",
  ),
  "malformed row": (
    {"items.csv": "item,genre,tags\ni1,rock,a\ni2,jazz\n"},
    "items.csv",
    3,
    "tags",  # the first missing column
    "expected 3 fields",
  ),
  "duplicate item id": (
    {"items.csv": "item,genre,tags\ni1,rock,a\ni2,jazz,b\ni1,pop,c\n"},
    "items.csv",
    4,
    "item",
    "duplicate id 'i1'",
  ),
  "item not in corpus": (
    {"interactions.csv": "user,item,w,t\nu1,i1,1,1\nu2,i9,1,2\n"},
    "interactions.csv",
    3,
    "item",
    "'i9' is not an id in items.csv",
  ),
  "unknown user": (
    {"interactions.csv": "user,item,w,t\nu7,i1,1,1\n"},
    "interactions.csv",
    2,
    "user",
    "'u7' is not an id in users.csv",
  ),
  "bad weight": (
    {"interactions.csv": "user,item,w,t\nu1,i1,1,1\nu2,i2,heavy,2\n"},
    "interactions.csv",
    3,
    "w",
    "'heavy' is not a number",
  ),
  "bad timestamp": (
    {"interactions.csv": "user,item,w,t\nu1,i1,1,2020-01-01\nu2,i2,1,soon\n"},
    "interactions.csv",
    3,
    "t",
    "'soon' is not a timestamp",
  ),
  "mixed timestamps": (
    {"interactions.csv": "user,item,w,t\nu1,i1,1,2020-01-01\nu2,i2,1,7\n"},
    "interactions.csv",
    3,
    "t",
    "'7' is a number but other timestamps are dates",
  ),
  "query item not in corpus": (
    {
      "schema.json": json.dumps(SEED_SCHEMA),
      "interactions.csv": "user,item,w,t,seed\nu1,i1,1,1,\nu2,i2,1,2,i9\n",
    },
    "interactions.csv",
    3,
    "seed",
    "query item is not in the corpus: 'i9' is not an id in items.csv",
  ),
  "missing query item column": (
    {"schema.json": json.dumps(SEED_SCHEMA)},
    "interactions.csv",
    1,
    "seed",
    "missing column",
  ),
  "undecodable text": (
    {"items.csv": b"item,genre,tags\ni1,rock,a\ni2,j\xe9zz,b\n"},
    "items.csv",
    3,
    "genre",
    "not valid utf-8",
  ),
  "wrong kind": (
    {"schema.json": json.dumps(_schema_with(kind="numeric"), indent=2)},
    "schema.json",
    12,  # json.dumps(indent=2): line 11 is genre's "name", 12 its "kind"
    "kind",
    "kind must be one of",
  ),
  "wrong role": (
    {"schema.json": json.dumps(_schema_with(role="user"), indent=2)},
    "schema.json",
    13,
    "role",
    "role must be one of",
  ),
  "invalid json": (
    {"schema.json": '{\n  "item_id": "item",\n  "features": [\n}'},
    "schema.json",
    4,
    None,
    "invalid JSON",
  ),
  # Feature names become SavedModel input names: checked at prepare time,
  # not at export.
  "reserved feature name": (
    {"schema.json": json.dumps(_schema_with(name="exclude"), indent=2)},
    "schema.json",
    11,
    "name",
    "feature name 'exclude' is reserved",
  ),
  "feature name with a space": (
    {"schema.json": json.dumps(_schema_with(name="age group"), indent=2)},
    "schema.json",
    11,
    "name",
    "'age group' cannot be a SavedModel input name",
  ),
  "non-ascii feature name": (
    {"schema.json": json.dumps(_schema_with(name="país"), indent=2)},
    "schema.json",
    11,
    "name",
    "'país' cannot be a SavedModel input name",
  ),
  "unclosed quote": (
    {"items.csv": 'item,genre,tags\ni1,rock,a\ni2,"jazz,b\ni3,pop,c\n'},
    "items.csv",
    3,  # where the quote was opened, not the end of the file
    None,
    "never closed",
  ),
  "all weights zero": (
    {"interactions.csv": "user,item,w,t\nu1,i1,0,1\nu2,i2,0.0,2\n"},
    "interactions.csv",
    None,
    "w",
    "every weight is 0",
  ),
  "empty weight": (
    {"interactions.csv": "user,item,w,t\nu1,i1,1,1\nu2,i2,,2\n"},
    "interactions.csv",
    3,
    "w",
    "'' is not a number",
  ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_names_file_line_column_and_leaves_no_cache(tmp_path, case):
  overrides, name, line, column, fragment = BAD_INPUTS[case]
  write_dir(tmp_path / "raw", **overrides)
  cfg = config(tmp_path)
  with pytest.raises(data.DataError) as error:
    data.load(cfg)
  message = str(error.value)
  assert fragment in message
  assert error.value.path == str(tmp_path / "raw" / name)
  assert error.value.line == line
  assert error.value.column == column
  assert message.startswith(str(tmp_path / "raw" / name))
  cache = tmp_path / "cache"
  assert not cache.exists() or not any(cache.rglob("*"))


def test_schema_id_must_be_declared(tmp_path):
  schema = dict(SCHEMA, item_id="nope")
  write_dir(tmp_path / "raw", schema=schema)
  with pytest.raises(data.DataError, match="'nope' must be a categorical"):
    data.build(config(tmp_path))


def test_schema_unknown_key(tmp_path):
  schema = dict(SCHEMA, kinds={})
  write_dir(tmp_path / "raw", schema=schema)
  with pytest.raises(data.DataError) as error:
    data.build(config(tmp_path))
  assert error.value.column == "kinds"


def test_query_features_need_users_csv(tmp_path):
  write_dir(tmp_path / "raw", **{"users.csv": None})
  with pytest.raises(data.DataError, match=r"users\.csv"):
    data.build(config(tmp_path))


def test_files_lists_optional_users(tmp_path):
  write_dir(tmp_path / "raw", **{"users.csv": None})
  names = [os.path.basename(p) for p in csv_source.files(str(tmp_path / "raw"))]
  assert names == ["schema.json", "items.csv", "interactions.csv"]


def test_statistics_follow_the_kept_training_split(tmp_path):
  write_dir(tmp_path / "raw")
  full = data.build(config(tmp_path, seed=2))
  half = data.build(config(tmp_path, seed=2, train_fraction=0.5))
  train = half.splits["train"]
  # 3 training interactions -> round(1.5) = 2 kept, a subset of the full ones.
  assert len(train) == 2
  full_pairs = set(
    zip(
      full.splits["train"].query_index.tolist(),
      full.splits["train"].item_index.tolist(),
      strict=True,
    )
  )
  pairs = list(
    zip(train.query_index.tolist(), train.item_index.tolist(), strict=True)
  )
  assert set(pairs) <= full_pairs
  np.testing.assert_array_equal(
    half.item_train_count, np.bincount(train.item_index, minlength=3)
  )
  indptr, indices = half.train_items_by_query
  seen = {
    (q, int(i)) for q in range(2) for i in indices[indptr[q] : indptr[q + 1]]
  }
  assert seen == set(pairs)
  np.testing.assert_array_equal(
    half.splits["test"].item_index, full.splits["test"].item_index
  )
  # The item table (CFM's dependence is computed from it) is the corpus's,
  # whatever the split keeps.
  assert half.items.keys() == full.items.keys()
  for name in full.items:
    np.testing.assert_array_equal(half.items[name], full.items[name])


def test_a_quoted_cell_over_several_lines_is_still_read(tmp_path):
  items = 'item,genre,tags\ni1,"rock\nand roll",a\ni2,jazz,b\ni3,pop,c\n'
  write_dir(tmp_path / "raw", **{"items.csv": items})
  prepared = data.load(config(tmp_path))
  assert "rock\nand roll" in prepared.vocabularies["genre"]


def test_an_error_quotes_a_bounded_amount_of_input(tmp_path):
  header = ",".join(f"column_{i}" for i in range(200_000))
  write_dir(tmp_path / "raw", **{"items.csv": f"{header}\n" + "x," * 3})
  with pytest.raises(data.DataError, match="missing column") as error:
    data.load(config(tmp_path))
  assert len(str(error.value)) < 1000
  assert "and 199980 more" in str(error.value)
