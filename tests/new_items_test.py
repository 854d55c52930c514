"""New items indexed by the exported item tower (build_index --add_items)."""

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import tfr_ssl  # noqa: F401
from tests.workflow_test import SCANN, trained_run
from tfr_ssl import workflow
from tfr_ssl.data import contract
from tfr_ssl.data.errors import DataError
from tfr_ssl.serving import export, new_items

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEW_IDS = ["new-a", "new-b", "new-c"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A trained and exported tiny run (no index yet)."""
  return trained_run(str(tmp_path_factory.mktemp("new_items")), index=False)


def write_csv(path, header, rows) -> str:
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)
  return str(path)


def corpus_raw(prepared):
  return export.raw_features(
    prepared.items, prepared.schema.item_features, prepared.vocabularies
  )


def twin_rows(prepared, twin: int, ids) -> tuple[list[str], list[list[str]]]:
  """CSV rows of items whose content features are those of corpus row twin."""
  raw = corpus_raw(prepared)
  names = [f.name for f in prepared.schema.item_features]
  item_id = prepared.schema.item_id
  rows = [
    [key if n == item_id else str(raw[n][twin]) for n in names] for key in ids
  ]
  return names, rows


def towers(workdir):
  return (
    export.load_tower(os.path.join(workdir, "export", "item")),
    export.load_tower(os.path.join(workdir, "export", "query")),
  )


@pytest.mark.parametrize("settings", [{}, SCANN], ids=["exact", "scann"])
def test_new_items_are_retrieved_with_the_item_towers_scores(
  run, tmp_path, settings
):
  workdir, prepared = run["workdir"], run["prepared"]
  schema = prepared.schema
  # The twin is an item with no training interaction, which the cold rule
  # (features.trained_values) embeds like an unknown id. The tiny run's data
  # has such items: its 300 items drawn by Zipf popularity into 3,107
  # training interactions (synthetic seed 0) leave 13 of them never drawn.
  cold = np.flatnonzero(prepared.item_train_count == 0)
  assert cold.size > 0
  twin = int(cold[0])
  names, rows = twin_rows(prepared, twin, NEW_IDS)
  path = write_csv(tmp_path / "items.csv", names, rows)

  # k = the whole corpus: every item is returned, however the model ranks
  # the new ones (an unknown id may well push them down).
  total = prepared.num_items + 3
  manifest = workflow.build_index_run(
    workdir, {**settings, "index.k": total}, add_items=path
  )

  assert manifest["index"]["kind"] == ("scann" if settings else "exact")
  assert manifest["num_items"] == manifest["k"] == total
  with open(path, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  assert manifest["added_items"] == {
    "source": os.path.abspath(path),
    "sha256": digest,
    "rows": 3,
    "count": 3,
    "replaced": 0,
    "corpus_items": prepared.num_items,
  }
  with open(os.path.join(workdir, "index", "manifest.json")) as f:
    assert json.load(f) == manifest

  # The scores the index should give, from the exported towers directly.
  item_tower, query_tower = towers(workdir)
  corpus = workflow.embed_raw(item_tower, corpus_raw(prepared))
  new_raw = {n: np.array([r[i] for r in rows]) for i, n in enumerate(names)}
  new = workflow.embed_raw(item_tower, new_raw)
  queries = export.raw_features(
    prepared.queries, schema.query_features, prepared.vocabularies
  )
  users = workflow.embed_raw(query_tower, queries)
  query = 0
  hits = workflow.retrieve(
    workdir, [{n: str(v[query]) for n, v in queries.items()}]
  )[0]
  by_id = {h["id"]: h for h in hits}
  assert len(by_id) == total
  # The corpus items score as the tower scores them, too.
  keys = prepared.item_keys()
  np.testing.assert_allclose(
    [by_id[key]["score"] for key in keys], users[query] @ corpus.T, atol=1e-4
  )
  expected = users[query] @ new.T
  got = [by_id[key]["score"] for key in NEW_IDS]
  np.testing.assert_allclose(got, expected, atol=1e-4)
  # The three ids are all unknown to the model, so they reach the tower as
  # the same out-of-vocabulary id with the same content: one embedding.
  np.testing.assert_allclose(got, [got[0]] * 3, atol=1e-5)
  # retrieve shows the new items' features (from index/items.jsonl).
  for key, row in zip(NEW_IDS, rows, strict=True):
    assert by_id[key]["features"] == dict(zip(names, row, strict=True))

  # Why the twin scores the same: the item tower is an MLP over the
  # per-feature embeddings. Twin and new items share every content feature,
  # so they differ only in the id. A new id is out of vocabulary and the
  # twin's id was never trained: the encoder replaces both by the id
  # feature's unknown embedding, so the tower's inputs are equal, hence the
  # embeddings and the scores the index gives.
  twin_embedding = workflow.embed_raw(
    item_tower, {n: v[twin : twin + 1] for n, v in corpus_raw(prepared).items()}
  )[0]
  np.testing.assert_allclose(twin_embedding, new[0], atol=1e-5)
  np.testing.assert_allclose(got, [by_id[keys[twin]]["score"]] * 3, atol=1e-4)


def test_known_id_replaces_the_corpus_item(run, tmp_path):
  workdir, prepared = run["workdir"], run["prepared"]
  keys = prepared.item_keys()
  names, rows = twin_rows(prepared, 1, [keys[0], "brand-new"])
  path = write_csv(tmp_path / "items.csv", names, rows)

  manifest = workflow.build_index_run(workdir, add_items=path)

  assert manifest["num_items"] == prepared.num_items + 1
  assert manifest["added_items"]["count"] == 1
  assert manifest["added_items"]["replaced"] == 1
  with open(os.path.join(workdir, "index", "items.jsonl")) as f:
    listed = [json.loads(line) for line in f]
  assert [r["id"] for r in listed] == [*keys, "brand-new"]
  # keys[0] keeps its row and id but now has the features of row 1.
  assert listed[0]["features"] == dict(zip(names, rows[0], strict=True))
  assert listed[0]["features"] != listed[1]["features"]


def test_index_without_items_file_shows_the_exports(run, tmp_path):
  workdir = str(tmp_path / "copy")
  shutil.copytree(run["workdir"], workdir)
  workflow.build_index_run(workdir)
  os.remove(os.path.join(workdir, "index", "items.jsonl"))
  hit = workflow.retrieve(workdir, [{"user_id": "u1"}], k=1)[0][0]
  assert hit["features"][run["prepared"].schema.item_id] == hit["id"]


SCHEMA = contract.Schema(
  features=(
    contract.Feature("item", "categorical", "item"),
    contract.Feature("genre", "categorical", "item"),
    contract.Feature("tags", "multi_categorical", "item"),
    contract.Feature("user", "categorical", "query"),
  ),
  item_id="item",
  query_id="user",
)


def test_read_normalises_cells_like_the_loader(tmp_path):
  path = tmp_path / "items.csv"
  path.write_text(
    '\ufefftags, item ,genre\n a | b ||c, i1 ,rock\n\n"x,y",i2,\n'
  )
  new = new_items.read(str(path), SCHEMA)
  assert new.ids == ["i1", "i2"]
  assert new.raw["tags"].tolist() == ["a|b|c", "x,y"]
  assert new.raw["genre"].tolist() == ["rock", ""]
  assert new.lines.tolist() == [2, 4]


@pytest.mark.parametrize(
  "text, line, column, message",
  [
    ("item,genre\ni1,rock\n", 1, "tags", "missing column"),
    ("item,genre,tags,colour\ni1,rock,a,red\n", 1, "colour", "not an item"),
    ("item,genre,tags\ni1,rock,a\n,jazz,b\n", 3, "item", "empty id"),
    (
      "item,genre,tags\ni1,rock,a\ni2,pop,b\ni1,jazz,c\n",
      4,
      "item",
      r"repeated \(first on line 2\)",
    ),
    ("item,genre,tags\ni1,rock,a\ni2,jazz\n", 3, "tags", "expected 3 fields"),
    ("item,genre,tags\n", 1, None, "no data rows"),
  ],
)
def test_bad_file_names_file_line_and_column(
  tmp_path, text, line, column, message
):
  path = tmp_path / "items.csv"
  path.write_text(text)
  with pytest.raises(DataError, match=message) as caught:
    new_items.read(str(path), SCHEMA)
  assert caught.value.path == str(path)
  assert caught.value.line == line
  assert caught.value.column == column
  assert str(caught.value).startswith(f"{path}, line {line}")


def test_binary_adds_items_and_reports_bad_lines(run, tmp_path):
  workdir = str(tmp_path / "copy")
  shutil.copytree(run["workdir"], workdir)
  prepared = run["prepared"]
  names, rows = twin_rows(prepared, 0, NEW_IDS)
  good = write_csv(tmp_path / "good.csv", names, rows)
  command = [sys.executable, "-m", "pipelines.build_index"]
  result = subprocess.run(
    [*command, f"--workdir={workdir}", f"--add_items={good}", "--k=20"],
    capture_output=True,
    text=True,
    cwd=REPO,
  )
  assert result.returncode == 0, result.stderr
  assert f"over {prepared.num_items + 3:,} items" in result.stdout
  assert "Added 3 item(s) and replaced 0" in result.stdout
  with open(os.path.join(workdir, "index", "manifest.json")) as f:
    manifest = json.load(f)
  assert manifest["added_items"]["count"] == 3
  assert manifest["k"] == 20

  rows[1][names.index(prepared.schema.item_id)] = ""
  bad = write_csv(tmp_path / "bad.csv", names, rows)
  result = subprocess.run(
    [*command, f"--workdir={workdir}", f"--add_items={bad}"],
    capture_output=True,
    text=True,
    cwd=REPO,
  )
  assert result.returncode == 1
  assert f"{bad}, line 3, column '{prepared.schema.item_id}': empty id" in (
    result.stderr
  )
  assert "Traceback" not in result.stderr
  # The failed update left the previous index in place.
  with open(os.path.join(workdir, "index", "manifest.json")) as f:
    assert json.load(f) == manifest
