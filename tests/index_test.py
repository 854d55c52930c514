"""Tests of the item index: audit, ScaNN settings, save / load / exclude."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from tfr_ssl.config import IndexConfig
from tfr_ssl.index import audit as index_audit
from tfr_ssl.index import search as index
from tfr_ssl.serving import retrieval as serving

# TFRS layers, reached through tfr_ssl so that Keras 2 is selected first.
top_k_layers = index.factorized_top_k

DIM = 16
USERS = [f"u{i}" for i in range(20)]
CITIES = ["paris", "rome", "oslo"]
FEATURES = {"user": USERS[:6], "city": ["paris", "rome", "oslo"] * 2}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def clustered(num, dim, seed, num_clusters=30):
  """Unit vectors around random cluster centres (like trained towers)."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(num_clusters, dim))
  x = centres[rng.integers(0, num_clusters, num)] + 0.5 * rng.normal(
    size=(num, dim)
  )
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def item_ids(num):
  return [f"item{i}" for i in range(num)]


def query_model(dim=DIM):
  """Dict of raw string features [B] -> [B, dim] embeddings."""
  inputs = {
    "user": tf_keras.Input(shape=(), dtype=tf.string, name="user"),
    "city": tf_keras.Input(shape=(), dtype=tf.string, name="city"),
  }
  tf_keras.utils.set_random_seed(0)
  parts = []
  for name, vocab in (("user", USERS), ("city", CITIES)):
    ids = tf_keras.layers.StringLookup(vocabulary=vocab)(inputs[name])
    parts.append(tf_keras.layers.Embedding(len(vocab) + 1, 8)(ids))
  joined = tf_keras.layers.Concatenate()(parts)
  return tf_keras.Model(inputs, tf_keras.layers.Dense(dim)(joined))


@pytest.fixture(scope="module")
def corpus():
  items = clustered(3000, DIM, seed=0)
  # Queries around other centres than the items: a hard case for ScaNN.
  queries = clustered(400, DIM, seed=1)
  return items, queries[:200], queries[200:]


def test_exact_below_threshold_audits_to_one(corpus):
  items, queries, _ = corpus
  searcher = index.build_searcher(
    items[:500], item_ids(500), IndexConfig(k=10, exact_below=1000)
  )
  assert isinstance(searcher, top_k_layers.BruteForce)
  assert index_audit.audit_recall(searcher, queries, items[:500], k=10) == 1.0


def test_scann_settings_follow_the_corpus():
  settings = index.scann_settings(10_000, IndexConfig(k=10, reorder=500))
  # sqrt(10k) = 100 leaves of 100 points; 20% of them = 20 leaves.
  assert settings["num_leaves"] == 100
  assert settings["num_leaves_to_search"] == 20
  assert settings["num_reordering_candidates"] == 500
  # 20 points per result * 400 results = 8000 points = 80 leaves.
  settings = index.scann_settings(10_000, IndexConfig(k=400))
  assert settings["num_leaves_to_search"] == 80
  # Explicit values win; reordering is capped by the corpus.
  settings = index.scann_settings(
    300, IndexConfig(k=10, num_leaves=7, leaves_to_search=3, reorder=10_000)
  )
  assert (settings["num_leaves"], settings["num_leaves_to_search"]) == (7, 3)
  assert settings["num_reordering_candidates"] == 300


def test_tuned_scann_reaches_high_recall(corpus):
  items, tune_queries, audit_queries = corpus
  ids = item_ids(len(items))
  config = IndexConfig(k=10, exact_below=100, reorder=200)
  untuned = index.build_searcher(items, ids, config)
  assert isinstance(untuned, index.ScaNNIndex)
  untuned_recall = index_audit.audit_recall(untuned, audit_queries, items, k=10)
  searcher = index.build_searcher(items, ids, config, tune_queries=tune_queries)
  # 55 leaves; reorder is explicit, so only leaves_to_search is measured
  # (one candidate) and the climb stopped at the first value reaching the
  # floor on the tuning half of the queries, below all 55 leaves.
  record = searcher.choice
  assert record.explicit == ["reorder"]
  (candidate,) = record.candidates
  chosen = searcher.num_leaves_to_search
  assert (candidate.leaves_to_search, candidate.reorder) == (chosen, 200)
  assert candidate.tuning[str(chosen)] >= 0.95 and chosen < 55
  assert all(r < 0.95 for r in list(candidate.tuning.values())[:-1])
  assert searcher.settings()["choice"]["candidates"][0]["reorder"] == 200
  # On held-out queries of the same kind.
  tuned = index_audit.audit_recall(searcher, audit_queries, items, k=10)
  # TFRS's ScaNN defaults: 100 leaves, 10 searched, AH without the
  # anisotropic threshold, no reordering.
  default = top_k_layers.ScaNN(k=10)
  default.index(tf.constant(items), tf.constant(ids))
  baseline = index_audit.audit_recall(default, audit_queries, items, k=10)
  print(
    f"recall@10: tuned ScaNN {tuned:.3f} ({chosen} of 55 leaves), "
    f"untuned 20% of leaves {untuned_recall:.3f}, TFRS defaults "
    f"{baseline:.3f}"
  )
  assert tuned >= 0.9


@pytest.mark.parametrize("exact_below", [10_000, 100])
def test_layer_call_maps_raw_features_like_search(corpus, exact_below):
  items, _, _ = corpus
  model = query_model()
  searcher = index.build_searcher(
    items,
    item_ids(len(items)),
    IndexConfig(k=4, exact_below=exact_below, reorder=50),
    query_model=model,
  )
  features = {n: tf.constant(v) for n, v in FEATURES.items()}
  scores, ids = searcher(features)
  expected_scores, expected_ids = searcher.search(model(features), 4)
  assert ids.shape == (6, 4)
  np.testing.assert_array_equal(ids.numpy(), expected_ids.numpy())
  np.testing.assert_allclose(scores.numpy(), expected_scores.numpy())
  # Inside a tf.function, as when served.
  _, traced_ids = tf.function(lambda f: searcher(f, k=2))(features)
  np.testing.assert_array_equal(traced_ids.numpy(), expected_ids.numpy()[:, :2])


def test_layers_round_trip_their_config():
  layer = index.ScaNNIndex(k=7, num_leaves=11, quantization_threshold=0.3)
  clone = index.ScaNNIndex.from_config(layer.get_config())
  assert clone.get_config() == layer.get_config()
  exact = index.ExactIndex(k=5)
  assert index.ExactIndex.from_config(exact.get_config()).get_config()["k"] == 5


def test_build_searcher_rejects_bad_ids():
  items = clustered(4, DIM, seed=0)
  with pytest.raises(ValueError, match="unique"):
    index.build_searcher(items, ["a", "b", "a", "c"], IndexConfig())
  with pytest.raises(ValueError, match="4 item embeddings but 3"):
    index.build_searcher(items, ["a", "b", "c"], IndexConfig())


def _in_memory(model, searcher, k):
  """Reference top-k of the in-memory query model and index."""
  embeddings = model({n: tf.constant(v) for n, v in FEATURES.items()})
  scores, ids = searcher.search(embeddings, k)
  return scores.numpy(), ids.numpy().astype(str)


def _save(searcher, path, model_id="m1", model=None):
  return serving.save_retrieval_model(
    model or query_model(),
    searcher,
    str(path),
    {"model_id": model_id, "query_features": ["user", "city"]},
    k=5,
  )


_LOAD_SCRIPT = """
import json, sys
import tfr_ssl
from tfr_ssl.index import search as index
from tfr_ssl.serving import retrieval as serving
features, exclude = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out = {}
for path in sys.argv[3:]:
  model = serving.load_retrieval_model(path, {"model_id": "m1"})
  plain, excluded = model(features), model(features, exclude=exclude)
  out[path] = {
    name: {"scores": r[0].numpy().tolist(),
           "ids": r[1].numpy().astype(str).tolist()}
    for name, r in (("plain", plain), ("exclude", excluded))
  }
print(json.dumps(out))
"""


def test_saved_model_in_fresh_process_matches_memory(corpus, tmp_path):
  items, tune_queries, _ = corpus
  ids = item_ids(len(items))
  exact = index.build_searcher(items, ids, IndexConfig(k=5))
  scann = index.build_searcher(
    items,
    ids,
    IndexConfig(k=5, exact_below=100, reorder=100),
    tune_queries=tune_queries,
  )
  model = query_model()
  expected = {}
  for name, searcher in (("exact", exact), ("scann", scann)):
    _save(searcher, tmp_path / name, model=model)
    expected[str(tmp_path / name)] = _in_memory(model, searcher, k=7)
  # Exclude each query's best item (and pad with "").
  exclude = [[ids_[0], ""] for ids_ in expected[str(tmp_path / "exact")][1]]
  result = subprocess.run(
    [
      sys.executable,
      "-c",
      _LOAD_SCRIPT,
      json.dumps(FEATURES),
      json.dumps(exclude),
      *expected,
    ],
    capture_output=True,
    text=True,
    cwd=REPO,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  loaded = json.loads(result.stdout.strip().splitlines()[-1])
  for path, (scores, ids_) in expected.items():
    plain, excluded = loaded[path]["plain"], loaded[path]["exclude"]
    np.testing.assert_array_equal(plain["ids"], ids_[:, :5])
    np.testing.assert_allclose(plain["scores"], scores[:, :5], rtol=1e-5)
    # Without the excluded item (the exact top-1), the top 5 are the in-
    # memory ranks 2..6 wherever that item was the index's own top 1.
    for row, banned in enumerate(exclude):
      kept = [i for i in ids_[row] if i != banned[0]][:5]
      assert excluded["ids"][row] == kept, (path, row)
  # Both indexes were really different kinds.
  with open(tmp_path / "scann" / "manifest.json") as f:
    settings = json.load(f)["index"]
  assert settings["kind"] == "scann"
  assert settings["num_leaves_to_search"] == scann.num_leaves_to_search


@pytest.fixture(scope="module")
def saved_exact(tmp_path_factory):
  items = clustered(300, DIM, seed=2)
  searcher = index.build_searcher(items, item_ids(300), IndexConfig(k=5))
  path = tmp_path_factory.mktemp("idx") / "index"
  manifest = _save(searcher, path)
  return path, searcher, manifest


def test_exclusion_drops_ids_and_pads_when_short(saved_exact):
  path, _, _ = saved_exact
  model = serving.load_retrieval_model(str(path))
  _, top = model(FEATURES)
  top = top.numpy().astype(str)
  # Query 0 excludes its ranks 1 and 3; query 1 an unknown id; the rest
  # nothing. Lists of different lengths are padded with "".
  exclude = [[top[0, 0], top[0, 2]], ["no-such-item"], [], [], [], []]
  scores, ids = model(FEATURES, exclude=exclude)
  ids = ids.numpy().astype(str)
  np.testing.assert_array_equal(ids[0, :3], [top[0, 1], top[0, 3], top[0, 4]])
  assert top[0, 0] not in ids[0] and top[0, 2] not in ids[0]
  np.testing.assert_array_equal(ids[1:], top[1:])
  assert ids.shape == scores.shape == (6, 5)
  assert model.manifest["index"]["kind"] == "exact"
  assert model.manifest["embedding_dim"] == DIM
  # Excluding all but three of a 300-item corpus leaves 3 results, padded.
  keep = ["item0", "item1", "item2"]
  everything_else = [[f"item{i}" for i in range(3, 300)]] * 6
  scores, ids = model(FEATURES, exclude=everything_else)
  ids = ids.numpy().astype(str)
  assert sorted(ids[0, :3]) == keep
  np.testing.assert_array_equal(ids[:, 3:], "")
  assert np.all(np.isneginf(scores.numpy()[:, 3:]))


def test_manifest_mismatch_is_refused(saved_exact):
  path, _, manifest = saved_exact
  assert manifest["versions"]["scann"]
  with pytest.raises(serving.IndexMismatchError, match=r"model_id.*'m1'.*'m2'"):
    serving.load_retrieval_model(str(path), {"model_id": "m2"})
  with pytest.raises(serving.IndexMismatchError, match="embedding_dim"):
    serving.load_retrieval_model(str(path), {"embedding_dim": 64})
  with pytest.raises(serving.IndexMismatchError, match="query_features"):
    serving.load_retrieval_model(str(path), {"query_features": ["user"]})
  with pytest.raises(serving.IndexMismatchError, match=r"manifest\.json"):
    serving.load_retrieval_model(str(path.parent / "nothing"))
  # Matching expectations load.
  serving.load_retrieval_model(
    str(path), {"model_id": "m1", "query_features": ("user", "city")}
  )


class _Tower(tf.Module):
  """An exported tower: a tf.Module whose `serve` maps raw features."""

  def __init__(self, model):
    super().__init__()
    self.model = model

  @tf.function(
    input_signature=[
      {n: tf.TensorSpec([None], tf.string) for n in ("user", "city")}
    ]
  )
  def serve(self, features):
    return self.model(features)


def test_loaded_export_object_serves_as_query_model(saved_exact, tmp_path):
  _, searcher, _ = saved_exact
  model = query_model()
  tf.saved_model.save(_Tower(model), str(tmp_path / "tower"))
  tower = tf.saved_model.load(str(tmp_path / "tower"))
  # Its bare function cannot be saved with the index: refused clearly.
  with pytest.raises(ValueError, match=r"bare tf\.function"):
    _save(searcher, tmp_path / "index", model=tower.serve)
  _save(searcher, tmp_path / "index", model=tower)
  del tower  # the index must hold its own copy of the tower
  _, ids = serving.load_retrieval_model(str(tmp_path / "index"))(FEATURES)
  _, expected = _in_memory(model, searcher, k=5)
  np.testing.assert_array_equal(ids.numpy().astype(str), expected)


def test_query_model_of_another_width_is_refused(saved_exact, tmp_path):
  _, searcher, _ = saved_exact
  with pytest.raises(ValueError, match="8-dim embeddings but the index"):
    _save(searcher, tmp_path / "index", model=query_model(dim=8))


def test_interrupted_save_keeps_the_old_index(saved_exact, monkeypatch):
  path, searcher, _ = saved_exact

  def crash(*args, **kwargs):
    raise RuntimeError("disk full")

  monkeypatch.setattr(serving.atomic, "write_json", crash)
  with pytest.raises(RuntimeError, match="disk full"):
    _save(searcher, path, model_id="m2")
  monkeypatch.undo()
  model = serving.load_retrieval_model(str(path), {"model_id": "m1"})
  assert model(FEATURES)[1].shape == (6, 5)
  assert sorted(os.listdir(path.parent)) == ["index"]


def test_benchmark_search_reports_both_rates(corpus):
  items, queries, _ = corpus
  searcher = index.build_searcher(items[:500], item_ids(500), IndexConfig())
  rates = index_audit.benchmark_search(searcher, queries, items[:500], k=10)
  assert rates["index_qps"] > 0 and rates["exact_qps"] > 0
  assert rates["speedup"] == pytest.approx(
    rates["index_qps"] / rates["exact_qps"]
  )


@pytest.mark.parametrize(
  "num_items, exact_below, reorder, exact",
  [
    (19_999, 20_000, 100, True),  # below the size threshold
    (20_000, 20_000, 10_000, True),  # would re-score half the corpus
    (20_001, 20_000, 10_000, False),  # re-scores just under half
    (100_000, 20_000, 10_000, False),
  ],
)
def test_exact_search_where_scann_cannot_pay_off(
  num_items, exact_below, reorder, exact
):
  config = IndexConfig(exact_below=exact_below, reorder=reorder)
  assert index.use_exact_search(num_items, config) is exact


def test_exact_search_is_chunked_by_score_budget(monkeypatch):
  rng = np.random.default_rng(3)
  items = rng.normal(size=[50, 4]).astype(np.float32)
  queries = rng.normal(size=[7, 4]).astype(np.float32)
  searcher = index.build_searcher(
    items, [f"i{r}" for r in range(50)], IndexConfig(k=5, exact_below=100)
  )
  whole = index_audit.exact_ids(searcher, queries, items, k=5)
  # A budget of 120 scores: 120 // 50 = 2 queries per call, 4 calls.
  monkeypatch.setattr(index_audit, "_SCORES_PER_CALL", 120)
  assert index_audit.queries_per_call(50) == 2
  np.testing.assert_array_equal(
    index_audit.exact_ids(searcher, queries, items, k=5), whole
  )
  # The same ids as a top-k over the full score matrix.
  expected = np.argsort(-(queries @ items.T), axis=1)[:, :5]
  np.testing.assert_array_equal(
    whole, np.array([f"i{r}".encode() for r in range(50)])[expected]
  )
  assert index_audit.audit_recall(searcher, queries, items, k=5) == 1.0
  speed = index_audit.benchmark_search(searcher, queries, items, k=5)
  assert speed["batch_size"] == 2
