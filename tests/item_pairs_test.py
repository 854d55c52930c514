"""Explicit item-to-item pairs (a query-item column) need no user column.

The paper's (seed item, item installed from the seed's page) pairs have no
user the model reads: interactions.csv may leave the user column out, the
data is prepared and trained item-to-item, and a user-to-item run on it is
refused in one line.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tfr_ssl  # noqa: F401
from tests.workflow_test import tiny_config
from tfr_ssl import data
from tfr_ssl.data import csv_source
from tfr_ssl.data.errors import DataError
from tfr_ssl.training import train, workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_ITEMS, NUM_PAIRS = 40, 400
FEATURES = [
  {"name": "app", "kind": "categorical", "role": "item"},
  {"name": "genre", "kind": "categorical", "role": "item"},
  {"name": "maker", "kind": "categorical", "role": "item"},
  {"name": "price", "kind": "categorical", "role": "item"},
  {"name": "user", "kind": "categorical", "role": "query"},
]


def write_pairs(path, features=FEATURES, users_csv=None):
  """items.csv and interactions.csv of (seed, app) pairs, no user column."""
  path.mkdir()
  schema = {
    "item_id": "app",
    "query_id": "user",
    "features": features,
    "interactions": {"item": "app", "query_item": "seed"},
  }
  (path / "schema.json").write_text(json.dumps(schema))
  (path / "items.csv").write_text(
    "app,genre,maker,price\n"
    + "".join(f"a{k},g{k % 5},m{k % 7},p{k % 3}\n" for k in range(NUM_ITEMS))
  )
  rng = np.random.default_rng(0)
  seeds = rng.integers(0, NUM_ITEMS, NUM_PAIRS)
  # An app is installed from the page of an app of the same genre.
  apps = (seeds + 5 * rng.integers(1, 4, NUM_PAIRS)) % NUM_ITEMS
  (path / "interactions.csv").write_text(
    "seed,app\n"
    + "".join(f"a{s},a{a}\n" for s, a in zip(seeds, apps, strict=True))
  )
  if users_csv is not None:
    (path / "users.csv").write_text(users_csv)
  return path


def _config(tmp_path, **overrides):
  values = {
    "data.source": "csv",
    "data.data_dir": str(tmp_path / "raw"),
    "model.task": "item_to_item",
    "train.batch_size": 32,
    "ssl.batch_size": 16,
    "train.epochs": 1,
    "train.steps_per_epoch": 3,
    "train.validation_examples": 0,
  }
  values.update(overrides)
  return tiny_config(str(tmp_path / "cache"), **values)


def test_pairs_without_users_are_prepared_with_one_placeholder_user(tmp_path):
  write_pairs(tmp_path / "raw")
  prepared = data.build(_config(tmp_path).data)
  assert prepared.item_to_item_source == "column"
  assert prepared.vocabularies["user"] == [csv_source.NO_USER]
  assert not csv_source.has_users(prepared.vocabularies, "user")
  # Every pair has its seed: every row is an item-to-item example.
  for split in prepared.splits.values():
    assert (split.prev_item_index >= 0).all()
  assert sum(len(s) for s in prepared.splits.values()) == NUM_PAIRS


def test_item_to_item_trains_and_user_to_item_is_refused(tmp_path):
  write_pairs(tmp_path / "raw")
  summary = train.train_and_evaluate(_config(tmp_path), str(tmp_path / "pairs"))
  assert summary["steps"] == 3
  path = tmp_path / "users"
  with pytest.raises(workdir.ConfigError, match="use --task=item_to_item"):
    train.train_and_evaluate(
      _config(tmp_path, **{"model.task": "user_to_item"}), str(path)
    )
  assert not path.exists()


def test_query_features_still_need_the_user_column(tmp_path):
  features = [
    *FEATURES,
    {"name": "age", "kind": "categorical", "role": "query"},
  ]
  write_pairs(tmp_path / "raw", features, users_csv="user,age\nu1,20s\n")
  with pytest.raises(DataError, match="missing column") as error:
    data.build(_config(tmp_path).data)
  assert "interactions.csv" in str(error.value)
  assert "'user'" in str(error.value)


def test_a_user_column_stays_required_without_a_query_item_column(tmp_path):
  raw = write_pairs(tmp_path / "raw")
  schema = json.loads((raw / "schema.json").read_text())
  schema["interactions"] = {"item": "app"}
  (raw / "schema.json").write_text(json.dumps(schema))
  with pytest.raises(DataError, match="missing column"):
    data.build(_config(tmp_path).data)


def test_prepare_data_says_the_query_items_come_from_the_column(tmp_path):
  write_pairs(tmp_path / "raw")
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "pipelines.prepare_data",
      "--source=csv",
      f"--data_dir={tmp_path / 'raw'}",
      f"--cache_dir={tmp_path / 'cache'}",
    ],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert "have a query item (column 'seed')" in result.stdout
  assert "previous item" not in result.stdout
