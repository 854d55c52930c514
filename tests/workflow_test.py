"""The whole chain on tiny synthetic data: train, export, index, evaluate.

Each binary is one library call, so the chain is tested through the library
(fast, in one process) and the binaries are tested separately in
pipelines_test.py.
"""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import tfr_ssl  # noqa: F401
from tfr_ssl import config as config_lib
from tfr_ssl import data as data_lib
from tfr_ssl import run_report, workflow
from tfr_ssl.data import history, query_side
from tfr_ssl.evaluation import pairs as eval_pairs
from tfr_ssl.serving import export
from tfr_ssl.serving import retrieval as serving
from tfr_ssl.training import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(cache_dir: str, **overrides) -> config_lib.Config:
  """A config whose whole run takes seconds (300 items, 6k interactions)."""
  values = {
    "data.cache_dir": cache_dir,
    "data.synthetic.num_items": 300,
    "data.synthetic.num_users": 200,
    "data.synthetic.num_interactions": 6000,
    "model.embedding_dim": 16,
    "model.query_layers": (32,),
    "model.item_layers": (32,),
    "model.output_dim": 16,
    "model.estimator_buckets": 1024,
    "ssl.batch_size": 64,
    "train.batch_size": 256,
    "train.epochs": 2,
    "train.steps_per_epoch": 0,
    "train.checkpoint_every": 8,
    "train.log_every": 8,
    "train.learning_rate": 0.01,
    "train.validation_examples": 500,
    "index.k": 50,
    "index.audit_queries": 50,
  }
  values.update(overrides)
  return config_lib.Config().override(values)


# Index settings of a ScaNN index over the ~300 items of a tiny run that
# searches every leaf and re-scores its best 100 candidates exactly
# (reorder < N / 2, so build_searcher does not fall back to exact search).
SCANN = {
  "index.exact_below": 0,
  "index.num_leaves": 4,
  "index.leaves_to_search": 4,
  "index.reorder": 100,
}


def trained_run(root: str, index: bool = True) -> dict:
  """A tiny run trained and exported under root, indexed if `index`.

  Returns:
    {"workdir": its workdir, "prepared": its dataset}.
  """
  workdir = os.path.join(root, "work")
  train.train_and_evaluate(tiny_config(os.path.join(root, "cache")), workdir)
  workflow.export_run(workdir)
  if index:
    workflow.build_index_run(workdir)
  _, prepared, _ = train.load_trained_model(workdir)
  return {"workdir": workdir, "prepared": prepared}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """One trained, exported, indexed and evaluated run."""
  root = tmp_path_factory.mktemp("run")
  config = tiny_config(str(root / "cache"))
  workdir = str(root / "work")
  summary = train.train_and_evaluate(config, workdir)
  workflow.export_run(workdir)
  index_manifest = workflow.build_index_run(workdir)
  metrics = workflow.evaluate_run(workdir)
  return {
    "workdir": workdir,
    "summary": summary,
    "metrics": metrics,
    "index_manifest": index_manifest,
  }


def test_chain_writes_the_workdir_contract(run):
  workdir = run["workdir"]
  for name in (
    "config.json",
    "checkpoints",
    "tensorboard",
    "export/query/saved_model.pb",
    "export/item/saved_model.pb",
    "export/manifest.json",
    "index/manifest.json",
    "eval/metrics.json",
    "eval/recall_by_decile.png",
  ):
    assert os.path.exists(os.path.join(workdir, name)), name
  # Two full passes over the training split (the stream must run across
  # the epoch boundary), validated after each.
  _, prepared, _ = train.load_trained_model(workdir)
  steps_per_epoch = len(prepared.splits["train"]) // 256
  assert run["summary"]["steps"] == 2 * steps_per_epoch
  assert run["summary"]["validation"][1]["step"] == 2 * steps_per_epoch
  assert [v["epoch"] for v in run["summary"]["validation"]] == [1, 2]
  # Every logged value is a mean over the same window of steps, so the
  # total is the sum of its parts (no spread-out term here).
  logs = run["summary"]["final_logs"]
  alpha = config_lib.Config().ssl.alpha
  assert logs["loss"] == pytest.approx(
    logs["main_loss"] + alpha * logs["ssl_loss"], rel=1e-4
  )
  metrics = run["metrics"]
  assert 0.0 <= metrics["recall@10"] <= metrics["recall@50"] <= 1.0
  assert set(metrics["slices"]) == {"head", "tail", "cold"}
  # The test split excludes the users' training and validation positives,
  # and a most-popular baseline is scored on the same pairs beside it.
  assert metrics["split"] == "test"
  assert metrics["excluded"] == ["train", "validation"]
  baseline = metrics["baseline"]["most_popular"]
  assert baseline["num_pairs"] == metrics["num_pairs"]
  assert baseline["excluded"] == metrics["excluded"]
  assert 0.0 <= baseline["recall@10"] <= baseline["recall@50"] <= 1.0
  for name, row in metrics["slices"].items():
    assert baseline["slices"][name]["num_pairs"] == row["num_pairs"]
  with open(os.path.join(workdir, "eval", "metrics.json")) as f:
    on_disk = json.load(f)["baseline"]["most_popular"]
  assert on_disk["recall@10"] == baseline["recall@10"]
  assert "most popular  recall@10" in run_report.report(workdir)
  # The model scored is the best validation epoch's, and metrics.json and
  # the report say which; every test pair was scored, none dropped.
  _, best = train.best_checkpoint(workdir)
  evaluated = metrics["evaluated"]
  assert evaluated["checkpoint"] == os.path.join("best", "model")
  assert (evaluated["epoch"], evaluated["step"]) == (
    best["epoch"],
    best["step"],
  )
  assert evaluated["validation_recall@10"] == best["recall@10"]
  assert (
    f"evaluated: epoch {best['epoch']} (step {best['step']:,}; best "
    "validation recall@10), test split, exact search"
  ) in run_report.report(workdir)
  protocol = metrics["protocol"]
  assert protocol["sampling"]["unit"] == "all"
  assert protocol["sampling"]["num_pairs"] == metrics["num_pairs"]
  assert protocol["known_pairs"] == "scored"
  assert protocol["known_pairs_dropped"] == 0
  assert protocol["cold"] == "items in no training interactions"
  # 300 items is below exact_below: the index is exact, so its audit is 1.
  with open(os.path.join(workdir, "index", "manifest.json")) as f:
    written = json.load(f)
  assert written["audit"] == 1.0
  assert run["index_manifest"] == written
  assert run_report.describe_index(written).startswith(
    "Index: exact over 300 items; recall@50 vs exact search 1.0000"
  )


def _stored_histories(prepared, config):
  """What the exported query tower reads for a known user sent without a
  history: the latest training and validation items (see export.py)."""
  return history.latest_items(
    history.sequences(prepared, ("train", "validation")),
    train.query_history_length(config),
  )


def test_exported_towers_equal_the_trained_model(run):
  model, prepared, config = train.load_trained_model(run["workdir"])
  schema = prepared.schema
  rows = np.arange(10)
  queries = dict(prepared.queries)
  queries[history.HISTORY] = _stored_histories(prepared, config)
  for name, features, table, tower in (
    ("query", schema.query_features, queries, model.query_tower),
    ("item", schema.item_features, prepared.items, model.item_tower),
  ):
    loaded = export.load_tower(os.path.join(run["workdir"], "export", name))
    raw = export.raw_features(table, features, prepared.vocabularies, rows)
    served = workflow.embed_raw(loaded, raw)
    expected = tower({k: tf.constant(v[rows]) for k, v in table.items()})
    np.testing.assert_allclose(served, expected.numpy(), atol=1e-5)


_RETRIEVE_IN_FRESH_PROCESS = """
import json, sys
from tfr_ssl import workflow
queries = json.loads(sys.argv[2])
results = workflow.retrieve(sys.argv[1], queries, k=5)
print(json.dumps([[(h["id"], h["score"]) for h in r] for r in results]))
"""


def test_retrieval_savedmodel_in_a_fresh_process_matches_the_model(run):
  model, prepared, config = train.load_trained_model(run["workdir"])
  rows = np.array([0, 1, 2])
  raw = export.raw_features(
    prepared.queries,
    prepared.schema.query_features,
    prepared.vocabularies,
    rows,
  )
  queries = [{k: str(v[i]) for k, v in raw.items()} for i in range(len(rows))]
  result = subprocess.run(
    [
      sys.executable,
      "-c",
      _RETRIEVE_IN_FRESH_PROCESS,
      run["workdir"],
      json.dumps(queries),
    ],
    capture_output=True,
    text=True,
    check=True,
    cwd=REPO,
  )
  served = json.loads(result.stdout.strip().splitlines()[-1])
  # The same top 5, computed here from the in-memory towers.
  items = model.item_tower(
    {k: tf.constant(v) for k, v in prepared.items.items()}
  ).numpy()
  users = model.query_tower(
    {
      **{k: tf.constant(v[rows]) for k, v in prepared.queries.items()},
      history.HISTORY: tf.constant(_stored_histories(prepared, config)[rows]),
    }
  ).numpy()
  scores = users @ items.T
  keys = prepared.item_keys()
  for q in range(len(rows)):
    top = np.argsort(-scores[q], kind="stable")[:5]
    assert [item for item, _ in served[q]] == [keys[i] for i in top]
    np.testing.assert_allclose(
      [s for _, s in served[q]], scores[q, top], atol=1e-4
    )


def test_retrieve_excludes_items_and_rejects_unknown_features(run):
  queries = [{"user_id": "u1"}]
  first = workflow.retrieve(run["workdir"], queries, k=3)[0]
  banned = [first[0]["id"]]
  again = workflow.retrieve(run["workdir"], queries, exclude=[banned], k=3)[0]
  assert banned[0] not in [h["id"] for h in again]
  assert again[0]["id"] == first[1]["id"]
  with pytest.raises(workflow.QueryError, match="query features are"):
    workflow.retrieve(run["workdir"], [{"colour": "red"}])


def test_index_built_for_another_export_is_refused(run, tmp_path):
  workdir = str(tmp_path / "copy")
  shutil.copytree(run["workdir"], workdir)
  # Without best/, export takes the latest checkpoint: another model.
  shutil.rmtree(os.path.join(workdir, train.BEST_DIR))
  workflow.export_run(workdir)
  with pytest.raises(serving.IndexMismatchError, match="model_id"):
    workflow.load_retriever(workdir)


def test_exporting_the_same_checkpoint_again_keeps_the_index(run, tmp_path):
  workdir = str(tmp_path / "copy")
  shutil.copytree(run["workdir"], workdir)
  before = export.read_manifest(os.path.join(workdir, "export"))
  after = workflow.export_run(workdir)
  # The id derives from the checkpoint and the dataset version.
  assert after["model_id"] == before["model_id"]
  hits = workflow.retrieve(workdir, [{"user_id": "1"}], k=3)[0]
  assert len(hits) == 3


def test_interrupted_export_leaves_the_old_export_loadable(
  run, tmp_path, monkeypatch
):
  workdir = str(tmp_path / "copy")
  shutil.copytree(run["workdir"], workdir)
  before = export.read_manifest(os.path.join(workdir, "export"))
  real_save = tf.saved_model.save
  calls = []

  def crash_on_second_tower(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
      raise KeyboardInterrupt("simulated crash mid-export")
    return real_save(*args, **kwargs)

  monkeypatch.setattr(tf.saved_model, "save", crash_on_second_tower)
  with pytest.raises(KeyboardInterrupt):
    workflow.export_run(workdir)
  monkeypatch.undo()
  after = export.read_manifest(os.path.join(workdir, "export"))
  assert after["model_id"] == before["model_id"]
  tower = export.load_tower(os.path.join(workdir, "export", "item"))
  assert tower.serve is not None
  assert sorted(os.listdir(workdir)) == sorted(os.listdir(run["workdir"]))


def test_exact_evaluation_and_index_evaluation_agree(run):
  # The index is exact here, so retrieving through the saved model must give
  # the same metrics as the matmul evaluation: the same pairs, the same
  # exclusions, and held-out items also seen earlier stay rankable in both.
  through_index = workflow.evaluate_run(run["workdir"], use_index=True)
  exact = run["metrics"]
  assert through_index["excluded"] == exact["excluded"]
  # The index holds the export of the best epoch: the same model.
  assert through_index["evaluated"] == exact["evaluated"]
  assert through_index["protocol"] == exact["protocol"]
  assert through_index["num_pairs"] == exact["num_pairs"]
  assert (
    through_index["num_pairs_target_in_train"]
    == exact["num_pairs_target_in_train"]
  )
  for k in (10, 50):
    for kind in ("recall", "map"):
      assert through_index[f"{kind}@{k}"] == pytest.approx(
        exact[f"{kind}@{k}"], abs=1e-9
      )
  # The baseline does not depend on how the model's lists were retrieved.
  baselines = [m["baseline"]["most_popular"] for m in (through_index, exact)]
  for key in ("recall@10", "recall@50", "map@10"):
    assert baselines[0][key] == baselines[1][key]


def test_most_popular_baseline_matches_a_loop_over_the_pairs(run):
  # Reference: per pair, the corpus by training count (ties to the lower
  # row) minus the query's known items other than its own held-out items.
  _, prepared, _ = train.load_trained_model(run["workdir"])
  pairs = eval_pairs.select_pairs(prepared, "test")
  count = prepared.item_train_count
  order = np.lexsort((np.arange(count.shape[0]), -count))
  indptr, indices = pairs.excluded_items
  hits = []
  for q, item in zip(pairs.query_of_pair, pairs.targets, strict=True):
    own = pairs.targets[pairs.query_of_pair == q]
    banned = np.setdiff1d(indices[indptr[q] : indptr[q + 1]], own)
    ranking = order[~np.isin(order, banned)]
    hits.append(item in ranking[:10])
  baseline = run["metrics"]["baseline"]["most_popular"]
  assert baseline["recall@10"] == pytest.approx(np.mean(hits), abs=1e-12)


@pytest.mark.parametrize("logq", ["streaming", "static"])
def test_warm_start_carries_known_values_and_initialises_new_ones(
  run, tmp_path, logq
):
  # Warm starting reads the run's latest checkpoint (the best epoch's may
  # be an earlier one).
  old_model, old_data, old_config = train.load_trained_model(
    run["workdir"], which="latest"
  )
  # More items: ids 300..329 are new to the vocabulary. The sampling state
  # (per corpus row, and sized by the corpus when static) starts afresh.
  config = old_config.override(
    {"data.synthetic.num_items": 330, "model.logq": logq}
  )
  new_data = data_lib.load(config.data)
  model = train.build_model(config, new_data)
  fresh = model.item_encoder.tables[0].numpy().copy()
  train._warm_start(model, new_data, run["workdir"])

  item_id = new_data.schema.item_id
  position = model.item_encoder.feature_names.index(item_id)
  old_table = old_model.item_encoder.tables[position].numpy()
  new_table = model.item_encoder.tables[position].numpy()
  old_row = {v: i + 1 for i, v in enumerate(old_data.vocabularies[item_id])}
  carried = new_values = 0
  for i, value in enumerate(new_data.vocabularies[item_id]):
    if value in old_row:
      np.testing.assert_array_equal(new_table[i + 1], old_table[old_row[value]])
      carried += 1
    else:
      np.testing.assert_array_equal(new_table[i + 1], fresh[i + 1])
      new_values += 1
  assert carried > 0 and new_values > 0
  # The estimator's state is per corpus row: fresh (zeros), not copied.
  if logq == "streaming":
    assert all(not np.any(v.numpy()) for v in model.sampling.variables)
  # The MLP is copied as is.
  np.testing.assert_array_equal(
    model.item_tower.projection.kernel.numpy(),
    old_model.item_tower.projection.kernel.numpy(),
  )


def test_a_workdir_of_another_run_is_refused(run):
  config = train.read_config(run["workdir"]).override({"ssl.alpha": 0.0})
  with pytest.raises(train.WorkdirError, match=r"ssl\.alpha"):
    train.train_and_evaluate(config, run["workdir"])


def test_pretrain_schedule_runs_ssl_steps_before_the_epochs(tmp_path):
  config = tiny_config(
    str(tmp_path / "cache"),
    **{
      "train.schedule": "pretrain",
      "train.pretrain_steps": 5,
      "train.epochs": 1,
      "train.steps_per_epoch": 3,
      "train.log_every": 1,
    },
  )
  summary = train.train_and_evaluate(config, str(tmp_path / "work"))
  # 5 SSL-only steps, then one epoch of 3 joint steps, validated at its end.
  assert summary["steps"] == 8
  assert [(v["epoch"], v["step"]) for v in summary["validation"]] == [(1, 8)]
  # The last logged step was a joint one: both losses were computed.
  assert summary["final_logs"]["main_loss"] > 0
  assert summary["final_logs"]["ssl_loss"] > 0


def test_evaluation_on_a_seeded_sample_of_queries(run):
  full = run["metrics"]
  half = full["num_pairs"] // 2
  sampled = workflow.evaluate_run(run["workdir"], max_pairs=half)
  assert sampled["max_pairs"] == half and full["max_pairs"] == 0
  # Whole queries: as many as hold `half` pairs at the average pairs per
  # query, each with all its pairs (eval_pairs_test checks the draw).
  sampling = sampled["protocol"]["sampling"]
  expected = math.floor(half * full["num_queries"] / full["num_pairs"] + 0.5)
  assert sampling["unit"] == "query"
  assert sampled["num_queries"] == sampling["num_queries"] == expected
  assert sampled["num_pairs"] == sampling["num_pairs"]
  assert sampling["of_pairs"] == full["num_pairs"]
  # Seeded by train.seed: the same sample, so the same figures.
  again = workflow.evaluate_run(run["workdir"], max_pairs=half)
  assert again["recall@10"] == sampled["recall@10"]
  with pytest.raises(ValueError, match="max_pairs"):
    workflow.evaluate_run(run["workdir"], max_pairs=-1)
  # Leave the run's eval/metrics.json as the fixture wrote it.
  workflow.evaluate_run(run["workdir"])


def test_item_to_item_evaluation_reports_the_known_pairs_it_drops(tmp_path):
  config = tiny_config(
    str(tmp_path / "cache"),
    **{"model.task": "item_to_item", "train.epochs": 1},
  )
  workdir = str(tmp_path / "work")
  train.train_and_evaluate(config, workdir)
  metrics = workflow.evaluate_run(workdir)
  _, prepared, _ = train.load_trained_model(workdir)
  pairs = eval_pairs.select_pairs(prepared, "test", "item_to_item")
  # The synthetic histories repeat transitions: some test pairs are
  # training or validation pairs, dropped and counted.
  dropped = pairs.selection["known_pairs_dropped"]
  assert dropped > 0
  with open(os.path.join(workdir, "eval", "metrics.json")) as f:
    on_disk = json.load(f)
  assert on_disk["protocol"]["known_pairs_dropped"] == dropped
  assert on_disk["protocol"] == metrics["protocol"]
  assert on_disk["num_pairs"] == len(pairs)
  assert on_disk["evaluated"]["epoch"] == 1
  # The slices count the rows item-to-item trains on.
  counts = query_side.query_side("item_to_item").item_train_count(prepared)
  assert on_disk["slices"]["cold"]["num_items"] == int((counts == 0).sum())
  assert on_disk["baseline"]["most_popular"]["slices"]["cold"][
    "num_items"
  ] == int((counts == 0).sum())
  text = run_report.report(workdir)
  assert f"{dropped:,} pairs equal to a train or validation pair dropped" in (
    text
  )
  assert "slices by training interactions that have a query item" in text
