"""Tests of the measured index choice: floor, exact search, explicit settings.

Which candidate is fastest is set by a fake timer (no timing asserts);
recall is really measured, on clustered data where a shallow reordering
depth (k candidates re-scored) is far below the floor and deeper ones are
above it.
"""

import json

import numpy as np
import pytest
import tensorflow as tf

from tests.index_test import _save, clustered, item_ids
from tfr_ssl import config as config_lib
from tfr_ssl.config import IndexConfig
from tfr_ssl.index import audit as index_audit
from tfr_ssl.index import choice as index_choice
from tfr_ssl.index import search as index
from tfr_ssl.index import tuning

DIM = 16
NUM_ITEMS = 3000


@pytest.fixture(scope="module")
def corpus():
  items = clustered(NUM_ITEMS, DIM, seed=0)
  # Queries around other centres than the items (a hard case for ScaNN):
  # 200 tune the leaves, 200 are held out.
  return items, clustered(400, DIM, seed=1)


def fake_timer(qps):
  """A timer whose rates are qps(kind, leaves_to_search, reorder): each
  pass of the held-out queries takes queries / rate seconds."""

  def timer(functions, batches, passes):
    assert passes >= 1
    queries = sum(int(b.shape[0]) for b in batches)
    return {
      key: index_audit.PassSeconds(queries / qps(*key), queries / qps(*key))
      for key in functions
    }

  return timer


def shallow_is_fast(kind, leaves, reorder):
  """Exact search at 100 queries/s; ScaNN faster the less it re-scores."""
  return 100.0 if kind == "exact" else 1e6 / reorder


def build(corpus, timer, **settings):
  items, queries = corpus
  config = IndexConfig(k=10, exact_below=100, **settings)
  return index.build_searcher(
    items, item_ids(len(items)), config, tune_queries=queries, timer=timer
  )


def test_a_candidate_below_the_floor_never_wins(corpus):
  searcher = build(corpus, fake_timer(shallow_is_fast))
  record = searcher.choice
  # k = 10 on 3000 items: depths 10, 30, 100, 300, 1000 (2 x 1000 < 3000).
  assert [c.reorder for c in record.candidates[1:]] == [10, 30, 100, 300, 1000]
  assert record.candidates[0].kind == "exact"
  # Re-scoring only the 10 best quantized scores misses true neighbours:
  # that candidate is the fastest (1e5 queries/s) but below the floor ...
  shallow = record.candidates[1]
  assert shallow.recall < 0.95 and shallow.qps == pytest.approx(1e5)
  # ... so the winner is the fastest of those at or above it.
  winner = record.candidates[record.winner]
  above = [c for c in record.candidates[1:] if c.recall >= 0.95]
  assert winner is max(above, key=lambda c: c.qps)
  assert winner.reorder > 10 and winner.recall >= 0.95
  assert isinstance(searcher, index.ScaNNIndex)
  assert (
    searcher.num_leaves_to_search,
    searcher.num_reordering_candidates,
  ) == (
    winner.leaves_to_search,
    winner.reorder,
  )
  assert record.reason.startswith("the fastest candidate with held-out")
  # The recall was measured on the held-out half, not the tuning half: the
  # exact top 10 of those 200 queries, recomputed here.
  items, queries = corpus
  held_out = index_audit.sample_queries(queries, 1000, seed=1)[200:]
  _, found = searcher.search(tf.constant(held_out), 10)
  exact = index_audit.exact_ids(searcher, held_out, items, 10)
  assert index_audit.recall_against(found.numpy(), exact, 10) == pytest.approx(
    winner.recall
  )
  assert (record.tuning_queries, record.held_out_queries) == (200, 200)


def test_exact_search_wins_when_it_is_faster(corpus):
  searcher = build(
    corpus, fake_timer(lambda kind, *_: 1e6 if kind == "exact" else 1e3)
  )
  assert isinstance(searcher, index.ExactIndex)
  record = searcher.choice
  assert record.kind == "exact" and record.winner == 0
  # ScaNN candidates above the floor existed but were 1000x slower.
  assert any(c.recall >= 0.95 for c in record.candidates[1:])
  assert "only 0.00x" in record.reason
  assert searcher.settings()["choice"]["winner"] == 0


def test_exact_search_wins_unless_scann_is_clearly_faster(corpus):
  # 5% faster than exact search is within timing noise (MIN_SPEEDUP 1.1).
  searcher = build(
    corpus, fake_timer(lambda kind, *_: 100.0 if kind == "exact" else 105.0)
  )
  assert isinstance(searcher, index.ExactIndex)
  assert "only 1.05x" in searcher.choice.reason


def test_exact_search_wins_when_nothing_meets_the_floor(corpus, monkeypatch):
  # Only the shallowest depth (k = 10 candidates re-scored) is tried: its
  # recall stays below the floor even with every leaf searched.
  monkeypatch.setattr(tuning, "_REORDER_LADDER", (1,))
  searcher = build(corpus, fake_timer(shallow_is_fast))
  assert isinstance(searcher, index.ExactIndex)
  record = searcher.choice
  (_, shallow) = record.candidates
  assert shallow.reorder == 10 and shallow.recall < 0.95
  # It climbed to all 55 (~sqrt(3000)) leaves without reaching the floor.
  assert shallow.leaves_to_search == record.num_leaves == 55
  assert record.reason == (
    "exact search: no ScaNN candidate reached held-out recall@10 >= 0.95"
  )


def test_explicit_settings_are_used_as_given(corpus):
  def no_timing(functions, batches, passes):
    raise AssertionError("nothing should be measured")

  searcher = build(
    corpus, no_timing, num_leaves=20, leaves_to_search=3, reorder=50
  )
  assert isinstance(searcher, index.ScaNNIndex)
  settings = searcher.settings()
  assert (
    settings["num_leaves"],
    settings["num_leaves_to_search"],
    settings["num_reordering_candidates"],
  ) == (20, 3, 50)
  assert settings["choice"]["candidates"] == []
  assert settings["choice"]["reason"] == (
    "num_leaves, leaves_to_search and reorder set explicitly"
  )


def test_one_explicit_setting_fixes_it_and_rules_out_exact(corpus):
  # Exact search would be fastest, but reorder=30 asks for ScaNN; only
  # leaves_to_search is measured.
  searcher = build(
    corpus,
    fake_timer(lambda kind, *_: 1e6 if kind == "exact" else 1e3),
    reorder=30,
  )
  assert isinstance(searcher, index.ScaNNIndex)
  record = searcher.choice
  assert [c.kind for c in record.candidates] == ["scann"]
  assert searcher.num_reordering_candidates == 30
  assert record.explicit == ["reorder"]
  assert "exact search not tried: reorder set explicitly" in record.reason


def test_below_exact_below_nothing_is_measured(corpus):
  items, queries = corpus
  searcher = index.build_searcher(
    items[:500],
    item_ids(500),
    IndexConfig(k=10),
    tune_queries=queries,
    timer=lambda *_: pytest.fail("nothing should be measured"),
  )
  assert isinstance(searcher, index.ExactIndex)
  assert searcher.choice.reason == (
    "exact search without measuring: 500 items, fewer than exact_below (20,000)"
  )


def test_the_record_is_written_with_every_candidate(corpus, tmp_path):
  searcher = build(corpus, fake_timer(shallow_is_fast))
  manifest = _save(searcher, tmp_path / "index")
  with open(tmp_path / "index" / "manifest.json") as f:
    written = json.load(f)["index"]["choice"]
  assert written == manifest["index"]["choice"]
  assert [(c["kind"], c["reorder"]) for c in written["candidates"]] == [
    ("exact", 0),
    ("scann", 10),
    ("scann", 30),
    ("scann", 100),
    ("scann", 300),
    ("scann", 1000),
  ]
  for c in written["candidates"]:
    assert {"leaves_to_search", "recall", "qps", "cpu_qps"} <= set(c)
  assert written["recall_floor"] == 0.95 and written["recall_at"] == 10
  # The printed summary: the reason, then one line per candidate, the
  # winner marked.
  lines = index_choice.describe(written).splitlines()
  assert lines[0] == f"Index choice: scann: {written['reason']}."
  assert len(lines) == 1 + 6 + 1
  marked = [line for line in lines if line.startswith(" *")]
  winner = written["candidates"][written["winner"]]
  assert len(marked) == 1 and f"reorder {winner['reorder']}:" in marked[0]


def test_old_saved_configs_keep_their_reorder():
  # A config.json written before recall_floor existed, with the old
  # default reorder of 10000: it loads, and its reorder stays explicit.
  saved = config_lib.Config().to_dict()
  del saved["index"]["recall_floor"]
  saved["index"]["reorder"] = 10_000
  config = config_lib.Config.from_saved_json(json.dumps(saved))
  assert config.index.recall_floor == 0.95
  assert index_choice.explicit_settings(config.index) == ["reorder"]
  assert config_lib.Config().index.reorder == 0


@pytest.mark.parametrize("floor", [-0.1, 1.5, float("nan")])
def test_recall_floor_out_of_range_is_refused(floor):
  with pytest.raises(config_lib.ConfigError, match=r"index\.recall_floor"):
    config_lib.check(
      config_lib.Config().override({"index.recall_floor": floor})
    )


def test_ladders_follow_the_corpus():
  # 20 points per result: 20 * 10 * 55 / 3000 = 3.7 -> at least 4 leaves.
  assert tuning.leaves_ladder(3000, 55, 10) == [4, 6, 9, 11, 17, 28, 42, 55]
  # Depths re-scoring less than half the corpus only.
  assert tuning.reorder_ladder(3000, 10) == [10, 30, 100, 300, 1000]
  assert tuning.reorder_ladder(1_000_000, 100) == [100, 300, 1000, 3000, 10000]
  assert tuning.reorder_ladder(150, 100) == []
  # Without queries: the deepest depth within 10 x k.
  assert (
    index.scann_settings(3000, IndexConfig(k=10))["num_reordering_candidates"]
    == 100
  )
  assert np.isclose(tuning.recall_at(5), 5) and tuning.recall_at(100) == 10
