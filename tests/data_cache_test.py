"""Tests of the TFDS cache: round trip, hits, versions, atomic writes."""

import importlib.util
import inspect
import json
import os

import numpy as np
import pytest

from tfr_ssl import data
from tfr_ssl.config import DataConfig, SyntheticConfig
from tfr_ssl.data import cache, loader

ITEMS = "item,genre,tags\ni1,rock,a|b\ni2,jazz,\ni3,rock,b\ni4,pop,c\n"
INTERACTIONS = "user,item,t\n" + "".join(
  f"u{u},i{i},{10 * u + i}\n" for u in range(1, 6) for i in range(1, 4)
)
SCHEMA = """{
  "item_id": "item", "query_id": "user",
  "features": [
    {"name": "item", "kind": "categorical", "role": "item"},
    {"name": "genre", "kind": "categorical", "role": "item"},
    {"name": "tags", "kind": "multi_categorical", "role": "item"},
    {"name": "user", "kind": "categorical", "role": "query"}
  ],
  "interactions": {"timestamp": "t"}
}"""


def write(path, interactions=INTERACTIONS, schema=SCHEMA):
  os.makedirs(path, exist_ok=True)
  for name, text in (
    ("schema.json", schema),
    ("items.csv", ITEMS),
    ("interactions.csv", interactions),
  ):
    with open(os.path.join(path, name), "w") as f:
      f.write(text)


def config(tmp_path, **kwargs):
  write(tmp_path / "raw")
  return DataConfig(
    source="csv",
    data_dir=str(tmp_path / "raw"),
    cache_dir=str(tmp_path / "cache"),
    **kwargs,
  )


def assert_same(a, b):
  assert a.schema == b.schema
  assert a.vocabularies == b.vocabularies
  assert a.version == b.version
  for table_a, table_b in ((a.items, b.items), (a.queries, b.queries)):
    assert table_a.keys() == table_b.keys()
    for name in table_a:
      np.testing.assert_array_equal(table_a[name], table_b[name])
      assert table_a[name].dtype == table_b[name].dtype
  for name in a.splits:
    for field in ("query_index", "item_index", "weight", "prev_item_index"):
      x, y = getattr(a.splits[name], field), getattr(b.splits[name], field)
      np.testing.assert_array_equal(x, y)
      assert x.dtype == y.dtype
    if a.splits[name].timestamp is None:
      assert b.splits[name].timestamp is None
    else:
      np.testing.assert_array_equal(
        a.splits[name].timestamp, b.splits[name].timestamp
      )
  np.testing.assert_array_equal(a.item_train_count, b.item_train_count)
  for x, y in zip(a.train_items_by_query, b.train_items_by_query, strict=True):
    np.testing.assert_array_equal(x, y)


def test_round_trip_and_cache_hit(tmp_path, monkeypatch):
  cfg = config(tmp_path, split="temporal")
  assert not data.is_cached(cfg)
  first = data.load(cfg)
  assert data.is_cached(cfg)
  # A second load must not prepare again.
  monkeypatch.setattr(
    loader, "build_prepared", lambda *a: pytest.fail("prepared twice")
  )
  second = data.load(cfg)
  assert_same(first, second)
  assert second.version.startswith("csv-raw/")


# The query item of the item with row k (i{k+1}) is row k + 1 (i{k+2}), none
# for i1 (row 0).
SEED_INTERACTIONS = "user,item,t,seed\n" + "".join(
  f"u{u},i{i},{10 * u + i},{'' if i == 1 else f'i{i + 1}'}\n"
  for u in range(1, 6)
  for i in range(1, 4)
)
SEED_SCHEMA = SCHEMA.replace(
  '{"timestamp": "t"}', '{"timestamp": "t", "query_item": "seed"}'
)


def test_round_trip_keeps_the_item_to_item_source(tmp_path, monkeypatch):
  write(tmp_path / "raw", SEED_INTERACTIONS, SEED_SCHEMA)
  cfg = DataConfig(
    source="csv",
    data_dir=str(tmp_path / "raw"),
    cache_dir=str(tmp_path / "cache"),
  )
  first = data.load(cfg)
  monkeypatch.setattr(
    loader, "build_prepared", lambda *a: pytest.fail("prepared twice")
  )
  second = data.load(cfg)
  assert_same(first, second)
  assert second.schema.query_item == "seed"
  assert second.item_to_item_source == "column"
  for split in second.splits.values():
    expected = np.where(split.item_index == 0, -1, split.item_index + 1)
    np.testing.assert_array_equal(split.prev_item_index, expected)
  metadata = cache.read_metadata(data.cache_path(cfg))
  assert metadata["item_to_item_source"] == "column"
  assert metadata["schema"]["query_item"] == "seed"
  assert metadata["format_version"] == cache.FORMAT_VERSION


def test_round_trip_keeps_the_previous_item_source(tmp_path):
  cfg = config(tmp_path)
  built = data.build(cfg)
  cache.save(built, str(tmp_path / "v"), {})
  loaded = cache.load(str(tmp_path / "v"))
  assert loaded.schema.query_item is None
  assert loaded.item_to_item_source == "previous_item"
  metadata = cache.read_metadata(str(tmp_path / "v"))
  assert metadata["item_to_item_source"] == "previous_item"


def test_metadata_without_the_item_to_item_source_is_not_loaded(tmp_path):
  # A version of an older format has no item_to_item_source: it must not
  # load as if its mode were known (prepare then rebuilds it).
  built = data.build(config(tmp_path))
  path = str(tmp_path / "v")
  cache.save(built, path, {})
  metadata = cache.read_metadata(path)
  del metadata["item_to_item_source"]
  with open(os.path.join(path, cache.METADATA), "w") as f:
    json.dump(metadata, f)
  with pytest.raises(ValueError, match="item_to_item_source"):
    cache.load(path)


def test_round_trip_chunks(tmp_path, monkeypatch):
  # Tiny chunks: every column spans several examples of the TFDS split.
  monkeypatch.setattr(cache, "CHUNK_VALUES", 3)
  cfg = config(tmp_path)
  built = data.build(cfg)
  cache.save(built, str(tmp_path / "v"), {})
  assert_same(built, cache.load(str(tmp_path / "v")))


def test_round_trip_without_timestamps_synthetic(tmp_path):
  cfg = DataConfig(
    cache_dir=str(tmp_path),
    synthetic=SyntheticConfig(
      num_items=50, num_users=20, num_interactions=300, num_topics=2
    ),
    # The cache stores every user; holding users out happens after it.
    heldout_users=0.0,
  )
  built = data.build(cfg)
  built.splits = {
    name: type(split)(**{**vars(split), "timestamp": None})
    for name, split in built.splits.items()
  }
  cache.save(built, str(tmp_path / "v"), {})
  assert_same(built, cache.load(str(tmp_path / "v")))


def test_changed_file_or_config_gets_a_new_version(tmp_path):
  cfg = config(tmp_path)
  before = data.load(cfg)
  write(tmp_path / "raw", INTERACTIONS + "u9,i4,99\n")
  changed = data.load(cfg)
  assert changed.version != before.version
  assert sum(len(s) for s in changed.splits.values()) == 16
  cfg.train_fraction = 0.5
  assert data.version(cfg) != changed.version
  cfg.train_fraction = 1.0
  cfg.seed = 7
  assert data.version(cfg) != changed.version
  cfg.seed = 0
  assert data.version(cfg) == changed.version
  versions = os.listdir(tmp_path / "cache" / "csv-raw")
  versions.remove(".lock")  # writers of one dataset take turns
  assert len(versions) == 2  # old and new side by side, no temp dirs


def test_synthetic_parameters_version_the_cache(tmp_path):
  cfg = DataConfig(cache_dir=str(tmp_path))
  other = DataConfig(cache_dir=str(tmp_path))
  other.synthetic.zipf_exponent = 0.9
  assert data.version(cfg) != data.version(other)
  assert data.version(cfg) == data.version(DataConfig(cache_dir="elsewhere"))


def test_crash_while_storing_leaves_no_version(tmp_path, monkeypatch):
  cfg = config(tmp_path)

  def crash(tables, data_dir):
    os.makedirs(data_dir)
    with open(os.path.join(data_dir, "partial"), "w") as f:
      f.write("half")
    raise KeyboardInterrupt

  monkeypatch.setattr(cache, "_save_tfds", crash)
  with pytest.raises(KeyboardInterrupt):
    data.load(cfg)
  assert not data.is_cached(cfg)
  assert os.listdir(tmp_path / "cache" / "csv-raw") == [".lock"]
  monkeypatch.undo()
  assert len(data.load(cfg).splits["train"]) > 0


def test_damaged_version_is_rebuilt(tmp_path):
  cfg = config(tmp_path)
  first = data.load(cfg)
  tfds_dir = os.path.join(data.cache_path(cfg), "tfds")
  for root, _, files in os.walk(tfds_dir):
    for name in files:
      if "tfrecord" in name:
        os.remove(os.path.join(root, name))
  assert_same(first, data.load(cfg))


def test_force_rebuilds(tmp_path, monkeypatch):
  cfg = config(tmp_path)
  data.load(cfg)
  calls = []
  original = loader.build_prepared
  monkeypatch.setattr(
    loader, "build_prepared", lambda *a: calls.append(1) or original(*a)
  )
  data.prepare(cfg, force=True)
  data.prepare(cfg)
  assert calls == [1]


def test_data_build_means_the_function_only():
  # `tfr_ssl.data.build` prepares in memory; the module that assembles a
  # PreparedDataset from raw columns is `tfr_ssl.data.assemble`.
  assert inspect.isfunction(data.build)
  assert importlib.util.find_spec("tfr_ssl.data.build") is None
  assert importlib.util.find_spec("tfr_ssl.data.assemble") is not None
