"""One rule for values the model knows nothing about, in every path.

An empty bag, a value never seen in training and an id without training
interactions all read the feature's one unknown embedding: in the encoder
(training and evaluation), the exported towers, the index and the HTTP
service; and dropout to the unknown embedding in the main task trains it.
"""

import csv
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import tfr_ssl  # noqa: F401
from tests import model_fakes
from tests.serve_test import PREDICT, call
from tests.workflow_test import tiny_config
from tfr_ssl import config as config_lib
from tfr_ssl import workflow
from tfr_ssl.data import contract
from tfr_ssl.model import features
from tfr_ssl.model import two_tower as model
from tfr_ssl.serving import export
from tfr_ssl.serving.server import BackgroundServer, Options
from tfr_ssl.training import train

OOV, PAD = contract.OOV, contract.PAD


def _encoder(**kwargs):
  return features.FeatureEncoder(
    [
      {"name": "id", "vocabulary_size": 5, "multi": False},
      {"name": "tags", "vocabulary_size": 4, "multi": True},
    ],
    embedding_dim=3,
    **kwargs,
  )


def test_every_unknown_form_reads_the_one_unknown_embedding():
  # known: ids 1 and 2 trained, 3 and 4 not (and OOV 0 never).
  known = {"id": np.array([False, True, True, False, False])}
  encoder = _encoder(known_values=known)
  stacked = encoder.embed(
    {
      # id:   trained, OOV, untrained, missing
      "id": tf.constant([1, OOV, 3, PAD]),
      # tags: [OOV] (how training data stores an empty bag),
      #       [PAD, PAD] (how the exported tower pads an empty string),
      #       [OOV, OOV] (a bag of values never seen),
      #       [2, OOV] (a known value beside an unseen one)
      "tags": tf.constant(
        [[OOV, PAD], [PAD, PAD], [OOV, OOV], [2, OOV]], tf.int32
      ),
    }
  ).numpy()
  tables = [t.numpy() for t in encoder.tables]
  unknown = encoder.defaults.numpy()
  np.testing.assert_allclose(stacked[0, 0], tables[0][1])
  for row in (1, 2, 3):
    np.testing.assert_allclose(stacked[row, 0], unknown[0])
  for row in (0, 1, 2):
    np.testing.assert_allclose(stacked[row, 1], unknown[1])
  # The unseen tag drops out of the mean: the bag is tag 2 alone.
  np.testing.assert_allclose(stacked[3, 1], tables[1][2])


def test_get_config_round_trip_keeps_the_cold_rule():
  known = {"id": np.array([False, True, False, True, False])}
  encoder = _encoder(known_values=known)
  tower = features.Tower(encoder, layer_sizes=(4,), output_dim=2)
  ids = {"id": tf.constant([1, 2, 3]), "tags": tf.constant([[1], [2], [3]])}
  tower(ids)
  clone = features.Tower.from_config(tower.get_config())
  clone(ids)
  clone.set_weights(tower.get_weights())
  for name, values in known.items():
    np.testing.assert_array_equal(clone.encoder.known_values()[name], values)
  # Id 2 is untrained: both read the unknown embedding, so both agree; a
  # clone that lost the rule would read row 2 of the table instead.
  np.testing.assert_allclose(clone(ids).numpy(), tower(ids).numpy(), atol=1e-6)
  # The packed form is small JSON, not a list of a million bools.
  packed = tower.get_config()["encoder"]["config"]["known_values"]["id"]
  assert packed["size"] == 5 and isinstance(packed["bits"], str)


def test_unseen_users_read_the_unknown_user_id():
  dataset = model_fakes.tiny_dataset()
  # Users 10 and 11 get no training interaction.
  train_split = dataset.splits["train"]
  keep = train_split.query_index < 10
  dataset.splits["train"] = contract.Interactions(
    query_index=train_split.query_index[keep],
    item_index=train_split.item_index[keep],
    weight=train_split.weight[keep],
    timestamp=None,
    prev_item_index=train_split.prev_item_index[keep],
  )
  two_tower = model.TwoTowerModel(config_lib.Config(), dataset)
  encoder = two_tower.query_tower.encoder
  known = encoder.known_values()["user_id"]
  # Row r has id r + 1; id 0 is OOV.
  np.testing.assert_array_equal(known, [False] + [True] * 10 + [False] * 2)
  embedded = encoder.embed({"user_id": tf.constant([1, 11, 12, OOV])})
  unknown = encoder.defaults.numpy()[0]
  for row in (1, 2, 3):
    np.testing.assert_allclose(embedded[row, 0], unknown)
  assert not np.allclose(embedded[0, 0], unknown)


def _fit(dataset, steps=6, **overrides):
  values = {
    "ssl.alpha": 0.0,
    "model.id_dropout": 0.0,
    "model.value_dropout": 0.0,
    "model.query_id_dropout": 0.0,
  }
  values.update(overrides)
  config = config_lib.Config().override(values)
  two_tower = model.TwoTowerModel(config, dataset)
  two_tower.compile(optimizer=tf_keras.optimizers.Adagrad(0.5))
  item_before = two_tower.item_encoder.defaults.numpy().copy()
  query_before = two_tower.query_tower.encoder.defaults.numpy().copy()
  batches = model_fakes.batches(dataset, num_batches=steps, seed=1)
  two_tower.fit(model_fakes.as_dataset(batches), epochs=1, verbose=0)
  item_moved = np.abs(two_tower.item_encoder.defaults.numpy() - item_before)
  query_moved = np.abs(
    two_tower.query_tower.encoder.defaults.numpy() - query_before
  )
  return item_moved.max(axis=1), query_moved.max(axis=1)


def test_value_and_query_id_dropout_train_the_unknown_embeddings():
  dataset = model_fakes.tiny_dataset()
  # Item features: item_id (key), category, tags; query: user_id. Without
  # SSL and dropout nothing reads an unknown embedding (the fake data has
  # no empty bag or OOV value), so no gradient reaches them.
  item_moved, query_moved = _fit(dataset)
  np.testing.assert_array_equal(item_moved, [0, 0, 0])
  np.testing.assert_array_equal(query_moved, [0])
  item_moved, query_moved = _fit(
    dataset, **{"model.value_dropout": 0.5, "model.query_id_dropout": 0.5}
  )
  # Value dropout trains the content features' unknowns, not the id's;
  # query id dropout trains the user id's.
  assert item_moved[0] == 0
  assert (item_moved[1:] > 0).all()
  assert query_moved[0] > 0
  # Value dropout alone leaves the ids' unknowns (item and user) alone.
  item_moved, query_moved = _fit(dataset, **{"model.value_dropout": 0.5})
  assert item_moved[0] == 0 and query_moved[0] == 0
  assert (item_moved[1:] > 0).all()


# ---------------------------------------------------------------- end to end

NEW_TAG = "a_tag_never_seen"
UNKNOWN_USER = "a_user_never_seen"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A tiny run small enough that top-k returns the whole corpus.

  SSL is off, so only the dropout trains the unknown embeddings; new items
  with an empty bag and with an unseen tag are added to the index.
  """
  root = tmp_path_factory.mktemp("unseen")
  config = tiny_config(
    str(root / "cache"),
    **{
      "data.synthetic.num_items": 40,
      "data.synthetic.num_users": 60,
      "data.synthetic.num_interactions": 1500,
      "train.batch_size": 64,
      "ssl.batch_size": 16,
      "train.epochs": 1,
      "ssl.alpha": 0.0,
      "model.value_dropout": 0.3,
      "model.query_id_dropout": 0.3,
      "index.k": 50,
      "index.audit_queries": 10,
    },
  )
  workdir = str(root / "work")
  train.train_and_evaluate(config, workdir)
  workflow.export_run(workdir)
  model_, prepared, _ = train.load_trained_model(workdir)
  raw = export.raw_features(
    prepared.items, prepared.schema.item_features, prepared.vocabularies
  )
  names = [f.name for f in prepared.schema.item_features]
  known_tag = raw["tags"][0].split("|")[0]
  new_items = {
    "new_empty": "",
    "new_unseen": NEW_TAG,
    "new_mixed": f"{known_tag}|{NEW_TAG}",
  }
  path = str(root / "new_items.csv")
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(names)
    for key, tags in new_items.items():
      row = {n: str(raw[n][0]) for n in names}
      row.update({prepared.schema.item_id: key, "tags": tags})
      writer.writerow([row[n] for n in names])
  workflow.build_index_run(workdir, add_items=path)
  known_tag_id = prepared.vocabularies["tags"].index(known_tag) + 1
  return {
    "workdir": workdir,
    "model": model_,
    "prepared": prepared,
    "raw_row0": {n: str(raw[n][0]) for n in names},
    "new_items": new_items,
    "known_tag_id": known_tag_id,
  }


def _model_item(run, tags_ids):
  """The training model's embedding of corpus row 0's content with a new id
  and these tag ids (the form training data gives them)."""
  items = run["prepared"].items
  ids = {n: tf.constant(v[:1]) for n, v in items.items() if n != "tags"}
  ids[run["prepared"].schema.item_id] = tf.constant([OOV])
  ids["tags"] = tf.constant([tags_ids], tf.int32)
  return run["model"].item_tower(ids).numpy()[0]


def _model_unknown_user(run):
  queries = run["prepared"].queries
  ids = {n: tf.constant(np.full([1], OOV, np.int32)) for n in queries}
  return run["model"].query_tower(ids).numpy()[0]


def test_new_items_and_unseen_users_agree_in_every_path(run):
  workdir, new_items = run["workdir"], run["new_items"]
  # The training model: an empty bag is stored as [OOV]; an unseen tag is
  # OOV too; the mixed bag is the known tag alone.
  expected = {
    "new_empty": _model_item(run, [OOV]),
    "new_unseen": _model_item(run, [OOV]),
    "new_mixed": _model_item(run, [run["known_tag_id"]]),
  }
  np.testing.assert_allclose(
    expected["new_empty"], expected["new_unseen"], atol=1e-6
  )
  # The exported item tower, on raw strings.
  tower = export.load_tower(os.path.join(workdir, "export", "item"))
  for key, tags in new_items.items():
    raw = dict(run["raw_row0"], tags=tags)
    raw[run["prepared"].schema.item_id] = key
    served = workflow.embed_raw(
      tower, {k: np.array([v]) for k, v in raw.items()}
    )
    np.testing.assert_allclose(served[0], expected[key], atol=1e-5)
  # The exported query tower, on a user it never saw.
  query = export.load_tower(os.path.join(workdir, "export", "query"))
  user = _model_unknown_user(run)
  names = [f.name for f in run["prepared"].schema.query_features]
  raw_user = {
    n: np.array([UNKNOWN_USER if n == "user_id" else ""]) for n in names
  }
  np.testing.assert_allclose(
    workflow.embed_raw(query, raw_user)[0], user, atol=1e-5
  )
  # The index (library retrieve) and the HTTP service: the scores of all
  # 43 items (the corpus's 40 and the 3 new ones) for the unseen user are
  # the model's dot products.
  expected_score = {key: float(user @ v) for key, v in expected.items()}
  (hits,) = workflow.retrieve(workdir, [{"user_id": UNKNOWN_USER}], k=43)
  scored = {h["id"]: h["score"] for h in hits}
  assert len(scored) == 43
  for key, score in expected_score.items():
    assert scored[key] == pytest.approx(score, abs=1e-4)
  background = BackgroundServer(
    workdir, Options(port=0, poll_seconds=0.0, batch_wait_ms=1.0)
  )
  background.start(timeout=60.0)
  try:
    status, _, value = call(
      background.url,
      "POST",
      PREDICT,
      {"instances": [{"user_id": UNKNOWN_USER}], "top_k": 43},
    )
  finally:
    background.stop(timeout=60.0)
  assert status == 200, value
  (row,) = value["predictions"]
  served = dict(zip(row["ids"], row["scores"], strict=True))
  for key, score in expected_score.items():
    assert served[key] == pytest.approx(score, abs=1e-4)


def test_the_unknown_embeddings_were_trained(run):
  # Training seeds the initialisation (train.seed), so a model built the
  # same way starts where the run started. Check that on the OOV rows,
  # which the rule never reads (so no step moves them), then that every
  # unknown embedding moved away from its start.
  model_ = run["model"]
  tf_keras.utils.set_random_seed(model_.config.train.seed)
  fresh = train.build_model(model_.config, run["prepared"])
  for encoder, start in (
    (model_.item_encoder, fresh.item_encoder),
    (model_.query_tower.encoder, fresh.query_tower.encoder),
  ):
    for table, initial in zip(encoder.tables, start.tables, strict=True):
      np.testing.assert_array_equal(table.numpy()[OOV], initial.numpy()[OOV])
    moved = np.abs(encoder.defaults.numpy() - start.defaults.numpy())
    assert (moved.max(axis=1) > 1e-4).all(), moved.max(axis=1)


def test_item_to_item_cold_rule_counts_the_rows_it_trains_on():
  dataset = model_fakes.tiny_dataset()
  split = dataset.splits["train"]
  # Item row 5 is a positive only in rows without a query item: the
  # item-to-item task never trains on them, so its id is cold there.
  prev = split.prev_item_index.copy()
  prev[split.item_index == 5] = PAD
  dataset.splits["train"] = contract.Interactions(
    query_index=split.query_index,
    item_index=split.item_index,
    weight=split.weight,
    timestamp=None,
    prev_item_index=prev,
  )
  assert dataset.item_train_count[5] > 0
  known = {}
  for task in ("user_to_item", "item_to_item"):
    config = config_lib.Config().override({"model.task": task})
    two_tower = model.TwoTowerModel(config, dataset)
    known[task] = two_tower.item_encoder.known_values()["item_id"]
  # Row 5 has id 6 (id 0 is OOV).
  assert known["user_to_item"][6] and not known["item_to_item"][6]
  np.testing.assert_array_equal(
    np.delete(known["user_to_item"], 6), np.delete(known["item_to_item"], 6)
  )
