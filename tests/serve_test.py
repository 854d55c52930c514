"""The retrieval service: a real server on a free loopback port.

Most tests run the server in this process (`service.BackgroundServer`, its
own event loop thread, a real socket on 127.0.0.1 port 0) against one tiny
trained run; one test runs the `pipelines.serve` binary as a user does, and
one drives the page in headless Chromium when it is installed. Every server
is stopped in a `finally`/fixture teardown with bounded waits; no test
asserts on timing.
"""

import asyncio
import contextlib
import csv
import dataclasses
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

import numpy as np
import pytest

import tfr_ssl  # noqa: F401
from tests.workflow_test import SCANN, trained_run
from tfr_ssl import atomic, workflow
from tfr_ssl.data import query_side
from tfr_ssl.serving import (
  BackgroundServer,
  Options,
  batching,
  export,
  protocol,
  samples,
)
from tfr_ssl.serving import retrieval as serving

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "retrieval"
PREDICT = f"/v1/models/{MODEL}:predict"
TIMEOUT = 60.0


def options(**overrides):
  values = {"port": 0, "poll_seconds": 0.0, "batch_wait_ms": 1.0}
  values.update(overrides)
  return Options(**values)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A trained, exported and indexed tiny run, and its dataset."""
  return trained_run(str(tmp_path_factory.mktemp("serve")))


@pytest.fixture(scope="module")
def server(run):
  background = BackgroundServer(run["workdir"], options())
  background.start(timeout=TIMEOUT)
  try:
    yield background
  finally:
    background.stop(timeout=TIMEOUT)


def call(url, method="GET", path="/", body=None, raw=None, headers=None):
  """(status, headers, parsed JSON or text) of one request."""
  parts = urllib.parse.urlsplit(url)
  connection = http.client.HTTPConnection(
    parts.hostname, parts.port, timeout=TIMEOUT
  )
  try:
    data = raw if raw is not None else None
    if body is not None:
      data = json.dumps(body).encode()
    connection.request(method, path, body=data, headers=headers or {})
    response = connection.getresponse()
    text = response.read().decode()
    kind = response.getheader("Content-Type", "")
    value = json.loads(text) if kind.startswith("application/json") else text
    return response.status, dict(response.getheaders()), value
  finally:
    connection.close()


def predict(url, body, path=PREDICT):
  status, headers, value = call(url, "POST", path, body)
  assert status == 200, value
  return headers, value


def raw_queries(prepared, rows):
  raw = export.raw_features(
    prepared.queries,
    prepared.schema.query_features,
    prepared.vocabularies,
    rows,
  )
  return [{k: str(v[i]) for k, v in raw.items()} for i in range(len(rows))]


def test_predict_status_and_metadata(server, run):
  status, _, value = call(server.url, path=f"/v1/models/{MODEL}")
  assert status == 200
  assert value["model_version_status"] == [
    {
      "version": "1",
      "state": "AVAILABLE",
      "status": {"error_code": "OK", "error_message": ""},
    }
  ]
  # TF Serving's keys only; the service's own facts are at /ui/model.
  assert list(value) == ["model_version_status"]
  _, _, model = call(server.url, path="/ui/model")
  assert model["serving"]["num_items"] == 300

  status, _, meta = call(server.url, path=f"/v1/models/{MODEL}/metadata")
  assert status == 200
  signatures = meta["metadata"]["signature_def"]["signature_def"]
  names = [f.name for f in run["prepared"].schema.query_features]
  # The run's query tower reads a history (model.history_length > 0): one
  # more input, after the features.
  inputs = [*names, "history"]
  assert list(signatures["serving_default"]["inputs"]) == inputs
  assert "exclude" in signatures["exclude"]["inputs"]
  assert signatures["serving_default"]["inputs"][names[0]]["dtype"] == (
    "DT_STRING"
  )
  assert [f["name"] for f in model["query_features"]] == inputs
  assert model["top_k"] == {"default": 50, "max": 50}

  # Row format: the same top 5 as the library's retrieve, in one request.
  queries = raw_queries(run["prepared"], [0, 1, 2])
  expected = workflow.retrieve(run["workdir"], queries, k=5)
  headers, value = predict(server.url, {"instances": queries, "top_k": 5})
  assert headers["X-Model-Version"] == "1"
  for row, hits in zip(value["predictions"], expected, strict=True):
    assert row["ids"] == [h["id"] for h in hits]
    assert row["scores"] == pytest.approx([h["score"] for h in hits], abs=1e-5)
  # Columnar format, answered as TF Serving does ("outputs").
  columns = {n: [q[n] for q in queries] for n in names}
  _, value = predict(server.url, {"inputs": columns, "top_k": 5})
  assert value["outputs"]["ids"] == [[h["id"] for h in r] for r in expected]
  # Default top_k is the index's k; exclude and top_k per instance;
  # item features on request; a version in the path.
  _, value = predict(server.url, {"instances": queries[:1]})
  assert len(value["predictions"][0]["ids"]) == 50
  first = expected[0][0]["id"]
  _, value = predict(
    server.url,
    {
      "instances": [{**queries[0], "exclude": [first], "top_k": 3}],
      "item_features": True,
    },
    path=f"/v1/models/{MODEL}/versions/1:predict",
  )
  row = value["predictions"][0]
  assert row["ids"] == [h["id"] for h in expected[0][1:4]]
  assert row["features"][0] == expected[0][1]["features"]
  # A feature left out is unknown (as in workflow.retrieve), and a
  # multi-valued feature may be given as a list.
  partial = {names[0]: queries[0][names[0]]}
  _, value = predict(server.url, {"instances": [partial], "top_k": 5})
  alone = workflow.retrieve(run["workdir"], [partial], k=5)[0]
  assert value["predictions"][0]["ids"] == [h["id"] for h in alone]


def _big_body() -> bytes:
  return json.dumps({"instances": [{"user_id": "x" * 1000}] * 2000}).encode()


BAD_REQUESTS = [
  # (name, method, path, body bytes, status, error must contain)
  (
    "malformed json",
    "POST",
    PREDICT,
    b'{"instances": [',
    400,
    "not valid JSON",
  ),
  ("empty body", "POST", PREDICT, b"", 400, "body: empty"),
  ("not utf-8", "POST", PREDICT, b'{"a": "\xff"}', 400, "not UTF-8"),
  ("not an object", "POST", PREDICT, b"[1, 2]", 400, "body: expected"),
  ("no query", "POST", PREDICT, b"{}", 400, "neither was given"),
  (
    "both formats",
    "POST",
    PREDICT,
    b'{"instances": [{"user_id": "1"}], "inputs": {"user_id": ["1"]}}',
    400,
    "both were given",
  ),
  ("empty instances", "POST", PREDICT, b'{"instances": []}', 400, "empty"),
  (
    "instance not an object",
    "POST",
    PREDICT,
    b'{"instances": ["1"]}',
    400,
    "instances[0]: expected an object",
  ),
  (
    "empty instance",
    "POST",
    PREDICT,
    b'{"instances": [{}]}',
    400,
    "instances[0]: no query feature",
  ),
  (
    "unknown feature",
    "POST",
    PREDICT,
    b'{"instances": [{"user_id": "1"}, {"colour": "red"}]}',
    400,
    "instances[1].colour: unknown feature 'colour'",
  ),
  (
    "number for a string",
    "POST",
    PREDICT,
    b'{"instances": [{"user_id": 42}]}',
    400,
    "instances[0].user_id: user_id is categorical",
  ),
  (
    "null value",
    "POST",
    PREDICT,
    b'{"instances": [{"user_id": null}]}',
    400,
    "got null",
  ),
  (
    "top_k zero",
    "POST",
    PREDICT,
    b'{"instances": [{"user_id": "1"}], "top_k": 0}',
    400,
    "top_k: must be from 1 to 50",
  ),
  (
    "top_k too large",
    "POST",
    PREDICT,
    b'{"instances": [{"user_id": "1", "top_k": 51}]}',
    400,
    "instances[0].top_k: must be from 1 to 50",
  ),
  (
    "top_k a string",
    "POST",
    PREDICT,
    b'{"instances": [{"user_id": "1"}], "top_k": "5"}',
    400,
    "top_k: must be an integer",
  ),
  (
    "top_k a boolean",
    "POST",
    PREDICT,
    b'{"instances": [{"user_id": "1"}], "top_k": true}',
    400,
    "top_k: must be an integer",
  ),
  (
    "exclude not a list",
    "POST",
    PREDICT,
    b'{"instances": [{"user_id": "1", "exclude": "7"}]}',
    400,
    "instances[0].exclude: must be a list",
  ),
  (
    "exclude of numbers",
    "POST",
    PREDICT,
    b'{"instances": [{"user_id": "1", "exclude": [7]}]}',
    400,
    "instances[0].exclude[0]: item ids are strings",
  ),
  (
    "unknown body field",
    "POST",
    PREDICT,
    b'{"instance": [{"user_id": "1"}]}',
    400,
    "instance: unknown field",
  ),
  (
    "unknown signature",
    "POST",
    PREDICT,
    b'{"signature_name": "x", "instances": [{"user_id": "1"}]}',
    400,
    "signature_name: unknown",
  ),
  (
    "ragged columns",
    "POST",
    PREDICT,
    b'{"inputs": {"user_id": ["1", "2"], "age": ["a"]}}',
    400,
    "inputs.age: 1 entries",
  ),
  (
    "too many instances",
    "POST",
    PREDICT,
    json.dumps({"instances": [{"user_id": "1"}] * 257}).encode(),
    400,
    "at most 256 queries",
  ),
  ("body too large", "POST", PREDICT, _big_body(), 413, "body: larger than"),
  (
    "unknown model",
    "POST",
    "/v1/models/other:predict",
    b'{"instances": [{"user_id": "1"}]}',
    404,
    "model 'other' not found",
  ),
  (
    "unknown version",
    "POST",
    f"/v1/models/{MODEL}/versions/9:predict",
    b'{"instances": [{"user_id": "1"}]}',
    404,
    "version '9'",
  ),
  (
    "classify",
    "POST",
    f"/v1/models/{MODEL}:classify",
    b"{}",
    404,
    ":classify: not supported",
  ),
  ("get predict", "GET", PREDICT, None, 405, "method not allowed"),
  ("unknown path", "GET", "/v2/whatever", None, 404, "no such resource"),
  ("history without id", "GET", "/ui/history", None, 400, "query_id: missing"),
]


@pytest.mark.parametrize(
  "method, path, raw, status, message",
  [case[1:] for case in BAD_REQUESTS],
  ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_requests_get_a_json_error_naming_the_field(
  server, method, path, raw, status, message
):
  got, headers, value = call(server.url, method, path, raw=raw)
  assert got == status, value
  assert headers["Content-Type"].startswith("application/json")
  assert message in value["error"], value["error"]
  assert "Traceback" not in value["error"]
  # And the service still answers.
  got, _, _ = call(server.url, path=f"/v1/models/{MODEL}")
  assert got == 200


def test_malformed_http_does_not_stop_the_server(server):
  parts = urllib.parse.urlsplit(server.url)
  for garbage in (b"NOT HTTP AT ALL\r\n\r\n", b"\x00\xff" * 100, b"GET /"):
    with socket.create_connection((parts.hostname, parts.port), 10) as s:
      s.settimeout(10)
      s.sendall(garbage)
      s.shutdown(socket.SHUT_WR)
      try:
        reply = s.recv(4096)
      except (ConnectionResetError, TimeoutError):
        reply = b""
      assert b"Traceback" not in reply
  status, _, _ = call(server.url, path=f"/v1/models/{MODEL}")
  assert status == 200


def test_concurrent_queries_are_batched_into_one_model_call():
  calls = []

  def fake_run(version, queries):
    calls.append([q.features["q"] for q in queries])
    return [([q.features["q"]], [1.0]) for q in queries]

  async def scenario():
    batcher = batching.MicroBatcher(
      lambda: "v1", max_batch_size=4, max_wait=0.5, run=fake_run
    )
    batcher.start()
    try:
      # Seven requests (one of two queries) queued before the batcher runs.
      requests = [[protocol.Query({"q": str(i)})] for i in range(5)] + [
        [protocol.Query({"q": "5"}), protocol.Query({"q": "6"})]
      ]
      answers = await asyncio.gather(*(batcher.submit(r) for r in requests))
    finally:
      await batcher.stop()
    return answers, batcher.stats

  answers, stats = asyncio.run(scenario())
  # Every request got its own answers, from the version its batch read.
  for i, (version, results) in enumerate(answers[:5]):
    assert version == "v1" and results == [([str(i)], [1.0])]
  assert answers[5][1] == [(["5"], [1.0]), (["6"], [1.0])]
  # 4 + 1 queries did not fit one batch of 4: the request that did not fit
  # started the next batch, and a request is never split.
  assert calls == [["0", "1", "2", "3"], ["4", "5", "6"]]
  assert stats.batches == 2 and stats.queries == 7 and stats.requests == 6


def test_a_full_queue_is_refused_with_503():
  async def scenario():
    batcher = batching.MicroBatcher(
      lambda: None, max_queue=2, run=lambda v, q: [([], [])] * len(q)
    )
    batcher.start()
    try:
      first = asyncio.ensure_future(
        batcher.submit([protocol.Query({"q": "1"})] * 2)
      )
      await asyncio.sleep(0)
      with pytest.raises(protocol.RequestError) as error:
        await batcher.submit([protocol.Query({"q": "2"})])
      await first
    finally:
      await batcher.stop()
    return error.value

  error = asyncio.run(scenario())
  assert error.status == 503 and "overloaded" in error.message


def test_one_client_is_answered_without_a_batch_wait_or_hand_off(server, run):
  # The server has a 1 ms window (`options`): a request that waited for
  # company would count in `waits`.
  queries = raw_queries(run["prepared"], [0, 1, 2])
  _, _, before = call(server.url, path="/ui/model")
  for query in queries:
    _, value = predict(server.url, {"instances": [query], "top_k": 5})
    assert len(value["predictions"][0]["ids"]) == 5
  _, _, after = call(server.url, path="/ui/model")
  counts = {
    k: after["batching"][k] - before["batching"][k]
    for k in ("batches", "inline", "waits")
  }
  # One request at a time, nothing else in flight: each was its own batch,
  # called on the event loop's thread, and none waited.
  assert counts == {"batches": 3, "inline": 3, "waits": 0}


class Load:
  """Client threads posting predict requests until stopped (bounded)."""

  def __init__(self, url, queries, threads=4, limit_seconds=300.0):
    self.url = urllib.parse.urlsplit(url)
    self.queries = queries
    self.done = threading.Event()
    self.limit = time.monotonic() + limit_seconds
    self.failures = []
    self.versions = {}
    self.lock = threading.Lock()
    self.threads = [
      threading.Thread(target=self._client, args=(i,), daemon=True)
      for i in range(threads)
    ]

  def _client(self, seed):
    connection = http.client.HTTPConnection(
      self.url.hostname, self.url.port, timeout=TIMEOUT
    )
    i = seed
    try:
      while not self.done.is_set() and time.monotonic() < self.limit:
        query = self.queries[i % len(self.queries)]
        i += 1
        body = json.dumps({"instances": [query], "top_k": 10})
        try:
          connection.request("POST", PREDICT, body=body)
          response = connection.getresponse()
          data = response.read()
        except (OSError, http.client.HTTPException) as e:
          with self.lock:
            self.failures.append(repr(e))
          connection.close()
          continue
        with self.lock:
          if response.status != 200 or not json.loads(data)["predictions"]:
            self.failures.append((response.status, data[:200]))
          version = response.getheader("X-Model-Version")
          self.versions[version] = self.versions.get(version, 0) + 1
    finally:
      connection.close()

  def __enter__(self):
    for t in self.threads:
      t.start()
    return self

  def __exit__(self, *exc):
    self.done.set()
    for t in self.threads:
      t.join(TIMEOUT)

  def total(self):
    with self.lock:
      return sum(self.versions.values())


def wait_for(condition, what, timeout=TIMEOUT * 2):
  deadline = time.monotonic() + timeout
  while not condition():
    assert time.monotonic() < deadline, f"timed out waiting for {what}"
    time.sleep(0.05)


def new_items_csv(run, path, ids) -> str:
  """A CSV of new items, the content twins of corpus row 0."""
  prepared = run["prepared"]
  raw = export.raw_features(
    prepared.items, prepared.schema.item_features, prepared.vocabularies
  )
  names = [f.name for f in prepared.schema.item_features]
  item_id = prepared.schema.item_id
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(names)
    for key in ids:
      writer.writerow([key if n == item_id else str(raw[n][0]) for n in names])
  return str(path)


def test_refresh_under_load_fails_no_request(run, tmp_path):
  workdir = str(tmp_path / "work")
  shutil.copytree(run["workdir"], workdir)
  queries = raw_queries(run["prepared"], list(range(20)))
  new_ids = [f"new-{i}" for i in range(10)]
  background = BackgroundServer(workdir, options(poll_seconds=0.1))
  background.start(timeout=TIMEOUT)
  try:
    with Load(background.url, queries) as load:
      wait_for(lambda: load.total() >= 20, "requests on version 1")
      # The daily update: new items embedded by the exported item tower;
      # build_index replaces WORKDIR/index with one rename.
      workflow.build_index_run(
        workdir, add_items=new_items_csv(run, tmp_path / "new.csv", new_ids)
      )
      wait_for(
        lambda: background.versions.current.number == 2, "version 2 serving"
      )
      served_before = load.total()
      wait_for(lambda: load.total() >= served_before + 20, "requests on v2")
    assert load.failures == []
    assert load.versions.get("1", 0) > 0 and load.versions.get("2", 0) > 0

    _, _, value = call(background.url, path=f"/v1/models/{MODEL}")
    _, _, model = call(background.url, path="/ui/model")
    assert model["serving"]["version"] == "2"
    assert model["serving"]["num_items"] == 310
    assert model["serving"]["added_items"] == 10
    states = {s["version"]: s["state"] for s in value["model_version_status"]}
    assert states == {"2": "AVAILABLE", "1": "END"}
    # The new items are served: leave out every old one and only they remain.
    old = [run["prepared"].item_keys()[i] for i in range(300)]
    _, value = predict(
      background.url,
      {"instances": [{**queries[0], "exclude": old}], "top_k": 50},
    )
    assert sorted(value["predictions"][0]["ids"]) == sorted(new_ids)

    # An index built for another export is refused; version 2 serves on.
    index_dir = os.path.join(workdir, "index")
    with atomic.atomic_dir(index_dir) as tmp:
      shutil.copytree(index_dir, tmp, dirs_exist_ok=True)
      manifest = serving.read_manifest(tmp)
      manifest["model_id"] = "another-export"
      atomic.write_json(os.path.join(tmp, serving.MANIFEST), manifest)

    def refused():
      rows = background.versions.status()["model_version_status"]
      return any(r["status"]["error_code"] != "OK" for r in rows)

    wait_for(refused, "the refusal")
    _, _, value = call(background.url, path=f"/v1/models/{MODEL}")
    _, _, model = call(background.url, path="/ui/model")
    assert model["serving"]["version"] == "2"
    errors = [r for r in value["model_version_status"] if r["state"] == "END"]
    assert any("model_id" in r["status"]["error_message"] for r in errors)
    headers, _ = predict(background.url, {"instances": queries[:1]})
    assert headers["X-Model-Version"] == "2"
  finally:
    background.stop(timeout=TIMEOUT)


def test_numbered_versions_a_broken_one_is_refused(run, tmp_path):
  base = tmp_path / "versions"
  shutil.copytree(os.path.join(run["workdir"], "index"), base / "1")
  background = BackgroundServer(
    run["workdir"], options(index_dir=str(base), samples=False)
  )
  background.start(timeout=TIMEOUT)
  try:
    assert background.versions.current.number == 1
    assert background.refresh() == "unchanged"
    # Version 2's SavedModel is damaged: refused, and not retried.
    shutil.copytree(base / "1", base / "2")
    with open(base / "2" / "saved_model.pb", "wb") as f:
      f.write(b"not a SavedModel")
    assert background.refresh() == "refused"
    assert background.refresh() == "unchanged"
    status, _, value = call(background.url, path=f"/v1/models/{MODEL}")
    rows = {r["version"]: r for r in value["model_version_status"]}
    assert rows["1"]["state"] == "AVAILABLE"
    assert rows["2"]["state"] == "END"
    assert rows["2"]["status"]["error_code"] == "FAILED_PRECONDITION"
    assert "Traceback" not in rows["2"]["status"]["error_message"]
    # Version 3, a ScaNN index of the same export, replaces version 1.
    scann_run = str(tmp_path / "scann")
    shutil.copytree(run["workdir"], scann_run)
    workflow.build_index_run(scann_run, SCANN)
    shutil.copytree(os.path.join(scann_run, "index"), base / "3")
    assert background.refresh() == "loaded"
    status, _, value = call(
      background.url, path=f"/v1/models/{MODEL}/versions/3"
    )
    assert value["model_version_status"][0]["state"] == "AVAILABLE"
    _, _, model = call(background.url, path="/ui/model")
    assert model["serving"]["index"] == "scann"
    queries = raw_queries(run["prepared"], [0])
    headers, value = predict(
      background.url,
      {"instances": queries, "top_k": 5},
      path=f"/v1/models/{MODEL}/versions/3:predict",
    )
    assert headers["X-Model-Version"] == "3"
    assert len(value["predictions"][0]["ids"]) == 5
    status, _, _ = call(
      background.url,
      "POST",
      f"/v1/models/{MODEL}/versions/1:predict",
      {"instances": queries},
    )
    assert status == 404
  finally:
    background.stop(timeout=TIMEOUT)


def test_page_and_its_data_are_served(server, run):
  status, headers, text = call(server.url, path="/")
  assert status == 200
  assert headers["Content-Type"].startswith("text/html")
  assert "<title>Retrieval: retrieval</title>" in text
  assert "/v1/models/" in text and ":predict" in text
  status, _, value = call(server.url, path="/ui/samples")
  assert value["query_id"] == "user_id"
  assert len(value["samples"]) == 12
  sample = value["samples"][0]
  user = sample["features"]["user_id"]
  status, _, history = call(server.url, path=f"/ui/history?query_id={user}")
  assert status == 200
  # The user's training interactions, all of them for exclusion.
  prepared = run["prepared"]
  indptr, indices = prepared.train_items_by_query
  row = prepared.vocabularies["user_id"].index(user) + 1
  query_row = list(prepared.queries["user_id"]).index(row)
  keys = prepared.item_keys()
  seen = {keys[i] for i in indices[indptr[query_row] : indptr[query_row + 1]]}
  assert set(history["exclude"]) == seen
  train_rows = prepared.splits["train"].query_index
  assert history["total"] == int((train_rows == query_row).sum())
  assert history["items"][0]["features"]
  status, _, value = call(server.url, path="/ui/history?query_id=nobody")
  assert status == 404


def chromium():
  for name in ("chromium", "chromium-browser", "google-chrome"):
    path = shutil.which(name)
    if path:
      return path
  return None


@pytest.mark.skipif(chromium() is None, reason="Chromium is not installed")
def test_page_in_headless_chromium(server, tmp_path):
  _, _, samples = call(server.url, path="/ui/samples")
  sample = samples["samples"][1]
  _, _, history = call(
    server.url, path=f"/ui/history?query_id={sample['features']['user_id']}"
  )
  _, expected = predict(
    server.url,
    {
      "instances": [{**sample["features"], "exclude": history["exclude"]}],
      "top_k": 10,
    },
  )
  result = subprocess.run(
    [
      chromium(),
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      f"--user-data-dir={tmp_path / 'profile'}",
      "--virtual-time-budget=10000",
      "--dump-dom",
      f"{server.url}/?sample=1",
    ],
    capture_output=True,
    text=True,
    timeout=120,
  )
  dom = result.stdout
  assert 'data-ready="1"' in dom, result.stderr[-2000:]
  results = dom.split('id="results"')[1].split("</tbody>")[0]
  ids = re.findall(r'<td class="id">([^<]*)</td>', results)
  assert ids == expected["predictions"][0]["ids"]
  shown = dom.split('id="history_rows"')[1].split("</tbody>")[0]
  assert re.findall(r'<td class="id">([^<]*)</td>', shown) == [
    item["id"] for item in history["items"]
  ]
  assert "own items left out" in dom


def _read_until(stream, pattern, timeout):
  """The first line of a child's output matching pattern, read on a thread."""
  found = {}

  def read():
    for line in stream:
      if re.search(pattern, line):
        found["line"] = line
        return

  reader = threading.Thread(target=read, daemon=True)
  reader.start()
  reader.join(timeout)
  return found.get("line")


@contextlib.contextmanager
def serve_binary(workdir: str, *flags: str):
  """`pipelines.serve` started as a user starts it, on a loopback port the
  OS picks; yields (process, url) and ends the process within a bound."""
  process = subprocess.Popen(
    [
      sys.executable,
      "-m",
      "pipelines.serve",
      f"--workdir={workdir}",
      "--port=0",
      "--poll_seconds=0",
      *flags,
    ],
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.DEVNULL,
    text=True,
  )
  try:
    line = _read_until(process.stdout, r"^Serving model", 180)
    assert line, "the server did not start"
    yield process, re.search(r"http://127\.0\.0\.1:\d+", line).group(0)
  finally:
    if process.poll() is None:
      process.kill()
      process.wait(timeout=30)
    process.stdout.close()


def test_binary_serves_and_stops_on_sigterm(run):
  with serve_binary(run["workdir"]) as (process, url):
    status, _, value = call(url, path=f"/v1/models/{MODEL}")
    assert value["model_version_status"][0]["state"] == "AVAILABLE"
    status, _, meta = call(url, path=f"/v1/models/{MODEL}/metadata")
    assert status == 200 and meta["model_spec"]["version"] == "1"
    query = raw_queries(run["prepared"], [3])
    _, value = predict(url, {"instances": query, "top_k": 4})
    expected = workflow.retrieve(run["workdir"], query, k=4)[0]
    assert value["predictions"][0]["ids"] == [h["id"] for h in expected]
    status, _, text = call(url, path="/")
    assert status == 200 and "<html" in text
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


def test_binary_without_an_index_fails_in_one_line(run, tmp_path):
  workdir = str(tmp_path / "work")
  shutil.copytree(run["workdir"], workdir)
  shutil.rmtree(os.path.join(workdir, "index"))
  result = subprocess.run(
    [sys.executable, "-m", "pipelines.serve", f"--workdir={workdir}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=180,
  )
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "pipelines.build_index" in last
  assert "Traceback" not in result.stderr


def test_item_to_item_samples_are_popular_items_with_their_features(run):
  prepared = run["prepared"]
  offered = samples.Samples(prepared, "item_to_item", num_samples=3)
  # Counted over the rows the item-to-item task trains on (those with a
  # query item), as its evaluation counts them.
  count = query_side.query_side("item_to_item").item_train_count(prepared)
  assert not np.array_equal(count, prepared.item_train_count)
  top = int(count.argmax())
  first = offered.samples[0]
  assert first["label"] == (
    f"item {prepared.item_keys()[top]} ({int(count[top])} in training)"
  )
  names = {f.name for f in prepared.schema.item_features}
  assert set(first["features"]) == names
  assert len(offered.samples) == 3
  # Counts go down from the first sample to the last.
  labels = [s["label"] for s in offered.samples]
  counts = [int(label.rsplit("(", 1)[1].split()[0]) for label in labels]
  assert counts == sorted(counts, reverse=True) and counts[-1] < counts[0]
  assert offered.query_id is None and offered.history("u1", 5) is None


def test_binary_has_a_flag_per_option_and_checks_its_range():
  shown = subprocess.run(
    [sys.executable, "-m", "pipelines.serve", "--helpshort"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=180,
  ).stdout
  for field in dataclasses.fields(Options):
    assert re.search(rf"--(\[no\])?{field.name}:", shown), field.name
  assert "(an integer in the range [0, 65535])" in shown
  result = subprocess.run(
    [sys.executable, "-m", "pipelines.serve", "--workdir=x", "--port=70000"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=180,
  )
  assert result.returncode == 1
  assert "flag --port=70000" in result.stderr
