"""Tests of raw-feature towers: string lookups in front of an id tower."""

import numpy as np
import tensorflow as tf

import tfr_ssl  # noqa: F401
from tfr_ssl.data import contract
from tfr_ssl.serving import export

FEATURES = (
  contract.Feature("movie", "categorical", "item"),
  contract.Feature("genres", "multi_categorical", "item"),
)
VOCABULARIES = {"movie": ["m1", "m2"], "genres": ["Action", "Drama", "War"]}


def _echo_tower(ids):
  """Returns the ids themselves so the test sees what the tower received."""
  genres = tf.cast(ids["genres"], tf.float32)
  movie = tf.cast(ids["movie"], tf.float32)[:, None]
  width = tf.shape(genres)[1]
  genres = tf.pad(genres, [[0, 0], [0, 4 - width]], constant_values=-9)
  return tf.concat([movie, genres], axis=1)


def test_raw_strings_become_contract_ids():
  tower = export.RawFeatureTower(_echo_tower, FEATURES, VOCABULARIES)
  out = tower(
    {
      "movie": tf.constant(["m2", "unknown", "m1"]),
      "genres": tf.constant(["War|Action", "", "Drama|Nope|Action"]),
    }
  ).numpy()
  # movie: m2 -> 2, unknown -> OOV 0, m1 -> 1.
  # genres: War -> 3, Action -> 1; "" -> padding; Nope -> OOV 0.
  # Bags are padded with -1 to the widest bag (3), then -9 by the echo tower.
  np.testing.assert_array_equal(
    out,
    [
      [2, 3, 1, -1, -9],
      [0, -1, -1, -1, -9],
      [1, 2, 0, 1, -9],
    ],
  )


def test_all_empty_bags_still_give_one_padding_column():
  tower = export.RawFeatureTower(_echo_tower, FEATURES, VOCABULARIES)
  out = tower(
    {"movie": tf.constant(["m1"]), "genres": tf.constant([""])}
  ).numpy()
  np.testing.assert_array_equal(out, [[1, -1, -9, -9, -9]])


def test_raw_features_inverts_the_lookup():
  table = {
    "movie": np.array([2, 1, 0], np.int32),
    "genres": np.array([[3, 1], [2, -1], [-1, -1]], np.int32),
  }
  raw = export.raw_features(table, FEATURES, VOCABULARIES)
  assert list(raw["movie"]) == ["m2", "m1", ""]
  assert list(raw["genres"]) == ["War|Action", "Drama", ""]
  tower = export.RawFeatureTower(_echo_tower, FEATURES, VOCABULARIES)
  out = tower({k: tf.constant(v.astype(str)) for k, v in raw.items()})
  np.testing.assert_array_equal(out.numpy()[:, 0], [2, 1, 0])


def test_saved_tower_gives_the_same_output(tmp_path):
  tower = export.RawFeatureTower(_echo_tower, FEATURES, VOCABULARIES)
  path = str(tmp_path / "tower")
  tf.saved_model.save(tower, path, signatures={export.SIGNATURE: tower.serve})
  loaded = tf.saved_model.load(path)
  reloaded = export.load_tower(path)
  assert reloaded.serve is not None
  raw = {"movie": tf.constant(["m2"]), "genres": tf.constant(["Drama"])}
  np.testing.assert_array_equal(loaded.serve(raw).numpy(), tower(raw).numpy())
  signature = loaded.signatures[export.SIGNATURE]
  out = next(iter(signature(**raw).values()))
  np.testing.assert_array_equal(out.numpy(), tower(raw).numpy())
