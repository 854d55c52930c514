"""A typed history answers a user the data does not hold, in every path.

One tiny run with a history query tower (N = 4) is trained, exported and
indexed once; each test compares what a client gets (the exported query
tower, `workflow.retrieve`, the HTTP service) with the trained model fed
the history rows the rules of `data/history.py` give.
"""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import tensorflow as tf

import tfr_ssl  # noqa: F401
from tests.pipelines_test import run_binary
from tests.serve_test import PREDICT, call, serve_binary
from tests.workflow_test import tiny_config
from tfr_ssl import workflow
from tfr_ssl.data import contract, history
from tfr_ssl.evaluation import embed
from tfr_ssl.serving import export, page, protocol, versions
from tfr_ssl.serving.server import BackgroundServer, Options
from tfr_ssl.training import train

PAD, OOV = contract.PAD, contract.OOV
N = 4
STRANGER = "a_user_never_seen"
UNKNOWN_ITEM = "an_item_never_seen"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A trained, exported and indexed run whose index returns the corpus."""
  root = tmp_path_factory.mktemp("history_serving")
  config = tiny_config(
    str(root / "cache"),
    **{
      "data.synthetic.num_items": 40,
      "data.synthetic.num_users": 60,
      "data.synthetic.num_interactions": 1500,
      "train.batch_size": 64,
      "ssl.batch_size": 16,
      "train.epochs": 1,
      "model.history_length": N,
      "index.k": 40,
      "index.audit_queries": 10,
    },
  )
  workdir = str(root / "work")
  train.train_and_evaluate(config, workdir)
  manifest = workflow.export_run(workdir)
  workflow.build_index_run(workdir)
  model, prepared, _ = train.load_trained_model(workdir)
  return {
    "workdir": workdir,
    "model": model,
    "prepared": prepared,
    "manifest": manifest,
    "keys": prepared.item_keys(),
  }


def _model_query(run, user_row, rows):
  """The trained query tower on user `user_row` (None: unknown user, every
  query feature OOV) with history rows `rows` (latest first)."""
  queries = run["prepared"].queries
  if user_row is None:
    ids = {n: np.array([OOV], np.int32) for n in queries}
  else:
    ids = {
      n: np.asarray(v[user_row : user_row + 1]) for n, v in queries.items()
    }
  padded = np.full([1, N], PAD, np.int32)
  padded[0, : len(rows)] = rows
  features = {n: tf.constant(v) for n, v in ids.items()}
  features[history.HISTORY] = tf.constant(padded)
  return run["model"].query_tower(features).numpy()[0]


def _raw_user(run, user_row):
  """The raw query features of a user row (None: the stranger)."""
  prepared = run["prepared"]
  names = [f.name for f in prepared.schema.query_features]
  if user_row is None:
    return {n: STRANGER if n == "user_id" else "" for n in names}
  raw = export.raw_features(
    prepared.queries,
    prepared.schema.query_features,
    prepared.vocabularies,
    np.array([user_row]),
  )
  return {n: str(raw[n][0]) for n in names}


def _stored(run):
  """Each user's history at export: train + validation, latest N."""
  return history.latest_items(
    history.sequences(run["prepared"], ("train", "validation")), N
  )


def test_manifest_lists_the_history_input(run):
  manifest = run["manifest"]
  assert manifest["history_length"] == N
  assert manifest["query_features"][-1] == "history"
  names = [f.name for f in run["prepared"].schema.query_features]
  assert manifest["query_features"] == [*names, "history"]


def test_exported_query_tower_reads_a_history_as_the_model_does(run):
  keys = run["keys"]
  stored = _stored(run)
  # A user with a full stored history, so "stored history used" differs
  # from "empty".
  known = int(np.flatnonzero((stored >= 0).all(axis=1))[0])
  tower = export.load_tower(os.path.join(run["workdir"], "export", "query"))
  # Typed histories are oldest first; the model reads rows latest first.
  # Six corpus rows 0..5 typed oldest first, with an unknown id between:
  # the unknown id drops out and the latest N = 4 are rows 5, 4, 3, 2.
  typed = [keys[0], keys[1], UNKNOWN_ITEM, keys[2], keys[3], keys[4], keys[5]]
  cases = [
    # (user row, typed history, the rows the model should read)
    (known, "|".join(typed), [5, 4, 3, 2]),
    (None, "|".join(typed), [5, 4, 3, 2]),
    (known, f"{keys[7]}|{UNKNOWN_ITEM}", [7]),
    # A history of unknown ids only is given, so it replaces the stored
    # one: the model reads an empty history.
    (known, UNKNOWN_ITEM, []),
    # No history given: a known user reads the stored one, the stranger
    # an empty one; "|" is a history given with no item.
    (known, "", list(stored[known][stored[known] >= 0])),
    (None, "", []),
    (known, "|", []),
  ]
  for user, text, rows in cases:
    raw = _raw_user(run, user)
    raw["history"] = text
    served = workflow.embed_raw(
      tower, {n: np.array([v], dtype=object) for n, v in raw.items()}
    )[0]
    np.testing.assert_allclose(
      served, _model_query(run, user, rows), atol=1e-5, err_msg=text
    )
  # The stored history matters: without it the known user is another
  # point (so the case above could fail).
  assert not np.allclose(
    _model_query(run, known, stored[known]),
    _model_query(run, known, []),
    atol=1e-3,
  )


def _exact_top(run, query, k):
  prepared = run["prepared"]
  items = embed.embed_rows(run["model"].item_tower, prepared.items)
  scores = items @ query
  order = np.argsort(-scores, kind="stable")[:k]
  return [run["keys"][i] for i in order], scores[order]


def test_retrieve_answers_a_stranger_from_a_typed_history(run):
  keys = run["keys"]
  typed = [keys[3], keys[11], keys[20]]
  # The model reads them latest first.
  expected_ids, expected_scores = _exact_top(
    run, _model_query(run, None, [20, 11, 3]), 10
  )
  for given in (typed, "|".join(typed)):
    (hits,) = workflow.retrieve(
      run["workdir"], [{"user_id": STRANGER, "history": given}], k=10
    )
    assert [h["id"] for h in hits] == expected_ids
    np.testing.assert_allclose(
      [h["score"] for h in hits], expected_scores, atol=1e-4
    )
  # The history alone is a query too.
  (alone,) = workflow.retrieve(run["workdir"], [{"history": typed}], k=10)
  assert [h["id"] for h in alone] == expected_ids


def test_retrieve_refuses_a_history_element_that_is_not_a_string(run):
  with pytest.raises(workflow.QueryError) as error:
    workflow.retrieve(
      run["workdir"], [{"user_id": STRANGER}, {"history": ["i1", 7]}]
    )
  message = str(error.value)
  assert "query 2" in message and "'history'" in message
  assert "element 2" in message and "\n" not in message


def test_index_queries_read_the_evaluation_histories(run):
  # The index's tuning and audit queries carry the histories the exact
  # evaluation feeds the model: their embeddings are the model's.
  prepared = run["prepared"]
  config = train.read_config(run["workdir"])
  inputs = workflow.index_inputs(run["workdir"], config)
  split = config.eval.split
  table = history.query_table(prepared, config.model.task, split, N)
  rng = np.random.default_rng(config.train.seed)
  order = rng.permutation(prepared.num_queries)
  n = min(config.index.audit_queries, prepared.num_queries // 2)
  tune = np.sort(order[:n])
  expected = embed.embed_rows(run["model"].query_tower, table, tune)
  np.testing.assert_allclose(inputs.tune_queries, expected, atol=1e-5)
  # And the histories are not all empty (else this would prove little).
  assert (table["history"][tune] >= 0).any()


def test_index_evaluation_matches_the_exact_one(run):
  # The index returns the whole corpus exactly (40 items, k = 40, exact
  # search), so its Recall@K equals the exact evaluation's only if both
  # feed the same histories.
  # Validation queries read training items only, test queries training
  # and validation items.
  workdir = run["workdir"]
  for split in ("validation", "test"):
    exact = workflow.evaluate_run(workdir, split=split)
    through = workflow.evaluate_run(workdir, use_index=True, split=split)
    assert through["ks"]
    for k in through["ks"]:
      for name in (f"recall@{k}", f"map@{k}"):
        assert through[name] == pytest.approx(exact[name], abs=1e-9), (
          split,
          name,
        )


def test_both_splits_score_the_held_out_users_on_their_own_pairs(run):
  # Validation folds in each held-out user's first 60% and scores up to
  # 80%; test folds in 80% and scores the rest: the same users, more
  # history at test, and no pair counted twice as a fold-in (`heldout.py`).
  held = {
    split: workflow.evaluate_run(run["workdir"], split=split)["heldout_users"]
    for split in ("validation", "test")
  }
  assert held["validation"]["num_users"] == held["test"]["num_users"] > 0
  assert held["validation"]["num_pairs"] > 0
  assert held["validation"]["folded_in"] < held["test"]["folded_in"]
  for metrics in held.values():
    assert metrics["most_popular"]["num_pairs"] == metrics["num_pairs"]


def test_the_service_takes_a_history(run):
  keys = run["keys"]
  typed = [keys[3], keys[11], keys[20]]
  expected_ids, expected_scores = _exact_top(
    run, _model_query(run, None, [20, 11, 3]), 5
  )
  with serve_binary(run["workdir"]) as (_, url):
    status, _, value = call(
      url,
      "POST",
      PREDICT,
      {"instances": [{"user_id": STRANGER, "history": typed}], "top_k": 5},
    )
    assert status == 200, value
    (row,) = value["predictions"]
    assert row["ids"] == expected_ids
    np.testing.assert_allclose(row["scores"], expected_scores, atol=1e-4)
    # Columnar, as a `|`-joined string, with no other feature.
    status, _, value = call(
      url,
      "POST",
      PREDICT,
      {"inputs": {"history": ["|".join(typed)]}, "top_k": 5},
    )
    assert status == 200, value
    assert value["outputs"]["ids"] == [expected_ids]
    status, _, value = call(
      url,
      "POST",
      PREDICT,
      {"instances": [{"user_id": STRANGER}, {"history": [keys[0], 3]}]},
    )
    assert status == 400
    assert value["error"].startswith("instances[1].history[1]: "), value
    # The page's form offers the history.
    _, _, model = call(url, path="/ui/model")
    assert {"name": "history", "kind": "history"} in model["query_features"]


def test_retrieve_binary_takes_a_typed_history(run):
  keys = run["keys"]
  typed = [keys[3], keys[11], keys[20]]
  expected_ids, _ = _exact_top(run, _model_query(run, None, [20, 11, 3]), 10)
  flag = "--history=" + ",".join(typed)
  result = run_binary(
    "retrieve",
    f"--workdir={run['workdir']}",
    flag,
    "--json",
    "--noexclude_history",
    "--top_k=5",
  )
  assert result.returncode == 0, result.stderr[-2000:]
  (line,) = result.stdout.strip().splitlines()
  record = json.loads(line)
  assert record["query"] == {"history": typed}
  assert [h["id"] for h in record["items"]] == expected_ids[:5]
  # By default the items given are the user's own: left out.
  result = run_binary(
    "retrieve", f"--workdir={run['workdir']}", flag, "--json", "--top_k=5"
  )
  assert result.returncode == 0, result.stderr[-2000:]
  ids = [h["id"] for h in json.loads(result.stdout)["items"]]
  assert ids == [i for i in expected_ids if i not in typed][:5]
  # With --query, the history is that query's (a stranger here).
  result = run_binary(
    "retrieve",
    f"--workdir={run['workdir']}",
    f'--query={{"user_id": "{STRANGER}"}}',
    flag,
    "--json",
    "--noexclude_history",
    "--top_k=5",
  )
  assert result.returncode == 0, result.stderr[-2000:]
  ids = [h["id"] for h in json.loads(result.stdout)["items"]]
  assert ids == expected_ids[:5]


USER = versions.QueryFeature("user_id", contract.CATEGORICAL)
HISTORY_INPUT = versions.QueryFeature("history", contract.CATEGORICAL)


def test_protocol_reads_a_history_as_a_list_or_a_string():
  features = [USER, HISTORY_INPUT]
  body = {
    "instances": [
      {"history": ["i1", {"b64": "aTI="}]},  # "i2", base64-encoded
      {"user_id": "u", "history": "i3|i4"},
      {"user_id": "u", "history": []},
    ]
  }
  queries = protocol.parse_predict(body, features, 10).queries
  assert [q.features.get("history") for q in queries] == ["i1|i2", "i3|i4", ""]
  columns = {"inputs": {"history": [["i1", "i2"], "i3"]}}
  queries = protocol.parse_predict(columns, features, 10).queries
  assert [q.features["history"] for q in queries] == ["i1|i2", "i3"]
  for value, message in (
    ([None], "instances[0].history[0]: item ids are strings, got null"),
    (7, "instances[0].history: expected a list of item ids"),
  ):
    with pytest.raises(protocol.RequestError) as error:
      protocol.parse_predict({"instances": [{"history": value}]}, features, 10)
    assert error.value.message.startswith(message), error.value.message
    assert error.value.status == 400
  with pytest.raises(protocol.RequestError) as error:
    protocol.parse_predict({"inputs": {"history": [["i1", 2]]}}, features, 10)
  assert error.value.message.startswith("inputs.history[0][1]: ")


def test_a_model_without_history_says_so():
  with pytest.raises(protocol.RequestError) as error:
    protocol.parse_predict({"instances": [{"history": ["i1"]}]}, [USER], 10)
  assert "reads no history" in error.value.message
  with pytest.raises(workflow.QueryError, match="reads no history"):
    workflow.check_query({"history": ["i1"]}, ["user_id"], "query 1")


def test_history_strings_invert_the_rows():
  # Rows are latest first; the strings list the ids oldest first, and
  # PAD columns carry nothing.
  # An empty row is the explicit "no history", which a known user's
  # stored history does not replace.
  rows = np.array([[2, 0, PAD], [PAD, PAD, PAD], [1, PAD, PAD]])
  assert list(export.history_strings(rows, ["a", "b", "c"])) == [
    "a|c",
    "|",
    "b",
  ]


# The page's script run under Node on a minimal DOM (no browser is needed):
# its fetches go to the test's server; once the page marks itself ready the
# epilogue prints the result and history tables.
_DOM = """
const registry = {};
class El {
  constructor(tag) {
    this.tagName = tag; this.children = []; this._text = "";
    this.className = ""; this.style = {}; this.dataset = {};
    this.value = ""; this.checked = false; this.listeners = {};
  }
  set id(v) { this._id = v; registry[v] = this; }
  get id() { return this._id; }
  appendChild(c) { this.children.push(c); return c; }
  append(...xs) {
    for (const x of xs) {
      this.children.push(typeof x === "string" ? { text: x } : x);
    }
  }
  replaceChildren(...xs) { this.children = []; this.append(...xs); }
  set textContent(v) { this._text = String(v); this.children = []; }
  get textContent() {
    return this._text + this.children.map(
      (c) => (c instanceof El ? c.textContent : c.text)).join("");
  }
  addEventListener(type, f) { this.listeners[type] = f; }
}
const document = {
  body: new El("body"),
  createElement: (tag) => new El(tag),
  getElementById: (id) => registry[id] || null,
};
for (const id of ["model", "query", "sample", "fields", "top_k",
  "exclude_history", "run", "error", "status", "results", "history_title",
  "history_rows"]) {
  new El("x").id = id;
}
registry.top_k.value = "10";
registry.exclude_history.checked = true;
const [serverUrl, search] = process.argv.slice(2);
const location = { search: search };
const realFetch = globalThis.fetch;
const fetch = (url, options) => realFetch(serverUrl + url, options);
"""
_DUMP = """
const deadline = Date.now() + 30000;
const timer = setInterval(() => {
  const ready = document.body.dataset.ready === "1";
  if (!ready && !registry.error.textContent && Date.now() < deadline) return;
  clearInterval(timer);
  const ids = (tbody) => tbody.children.filter((tr) => tr.children.length > 2)
    .map((tr) => tr.children[1].textContent);
  console.log(JSON.stringify({
    ready: ready, error: registry.error.textContent,
    results: ids(registry.results), history: ids(registry.history_rows),
    title: registry.history_title.textContent,
    status: registry.status.textContent,
  }));
}, 20);
"""


@pytest.mark.skipif(
  shutil.which("node") is None, reason="Node is not installed"
)
def test_page_sends_a_typed_history_and_shows_it(run, tmp_path):
  keys = run["keys"]
  typed = [keys[3], UNKNOWN_ITEM, keys[11], keys[20]]
  # The unknown id drops out: the model reads rows 20, 11, 3.
  expected_ids, _ = _exact_top(run, _model_query(run, None, [20, 11, 3]), 10)
  script = page.render("retrieval").split("<script>")[1].split("</script>")[0]
  path = tmp_path / "page.js"
  path.write_text(_DOM + script + _DUMP)
  search = "?exclude_history=0&top_k=5&history=" + ",".join(typed)
  background = BackgroundServer(
    run["workdir"], Options(port=0, poll_seconds=0.0, batch_wait_ms=1.0)
  )
  background.start(timeout=60.0)
  try:
    result = subprocess.run(
      ["node", str(path), background.url, search],
      capture_output=True,
      text=True,
      timeout=120,
    )
  finally:
    background.stop(timeout=60.0)
  assert result.returncode == 0, result.stderr[-2000:]
  shown = json.loads(result.stdout)
  assert shown["ready"], shown
  assert shown["results"] == expected_ids[:5]
  # The typed history is listed as typed, the unknown id marked.
  assert shown["history"] == typed
  assert shown["title"].startswith("History given (4, oldest first; 1 not")
  assert "from a given history of 4 items" in shown["status"]
