"""One request cannot fail its neighbours.

A request is validated completely before it joins a batch (every string
must be text a string tensor takes), and a batch that still fails is run
again request by request, so only the request at fault gets an error. The
load test runs the `pipelines.serve` binary as a user does, on a loopback
port, with a bounded number of requests, and stops it with SIGTERM.
"""

import asyncio
import http.client
import json
import signal
import threading
import time

import pytest
import tensorflow as tf

from tests.serve_test import TIMEOUT, raw_queries, serve_binary
from tests.workflow_test import trained_run
from tfr_ssl.serving import batching, protocol
from tfr_ssl.serving.versions import QueryFeature

FEATURES = [
  QueryFeature("user_id", "categorical"),
  QueryFeature("genres", "multi_categorical"),
]
PREDICT = "/v1/models/retrieval:predict"
# A lone surrogate: valid JSON (json.loads gives a str holding U+D800), but
# not encodable as UTF-8, so no string tensor can hold it.
SURROGATE_BODIES = [
  (
    '{"instances": [{"user_id": "\\ud800"}], "top_k": 1}',
    "instances[0].user_id",
  ),
  (
    '{"instances": [{"user_id": "1", "exclude": ["7", "\\udfff"]}]}',
    "instances[0].exclude[1]",
  ),
  ('{"inputs": {"user_id": ["1", "\\ud800x"]}}', "inputs.user_id[1]"),
  (
    '{"inputs": {"user_id": ["1"], "exclude": [["\\ud800"]]}}',
    "inputs.exclude[0][0]",
  ),
  ('{"instances": [{"genres": ["a", "\\udc00"]}]}', "instances[0].genres[1]"),
]


@pytest.mark.parametrize(
  "body, field", SURROGATE_BODIES, ids=[f for _, f in SURROGATE_BODIES]
)
def test_a_string_no_tensor_takes_is_refused_naming_its_field(body, field):
  with pytest.raises(protocol.RequestError) as error:
    protocol.parse_predict(protocol.parse_json(body.encode()), FEATURES, 10)
  assert error.value.status == 400
  assert error.value.message.startswith(f"{field}: not valid Unicode text")


def test_unknown_and_unusual_values_are_not_refused():
  # Unknown values map to the out-of-vocabulary embedding; NUL, emoji and
  # escaped characters are valid text.
  body = {
    "instances": [
      {"user_id": "never-seen", "genres": ["\u0000", "\U0001f600"]},
      {"user_id": "\u00e9\ufeff"},
    ]
  }
  predict = protocol.parse_predict(body, FEATURES, 10)
  assert predict.queries[0].features == {
    "user_id": "never-seen",
    "genres": "\u0000|\U0001f600",
  }


def _failing_run():
  """A batch function failing on user_id bad-input (400) or server-fault."""
  calls = []

  def run(version, queries):
    ids = [q.features["user_id"] for q in queries]
    calls.append(ids)
    if "bad-input" in ids:
      raise tf.errors.InvalidArgumentError(None, None, "bad value")
    if "server-fault" in ids:
      raise RuntimeError("the model is broken")
    return [([i], [1.0]) for i in ids]

  return run, calls


def test_a_failed_batch_is_retried_per_request_and_only_the_culprit_fails():
  run, calls = _failing_run()

  async def scenario():
    batcher = batching.MicroBatcher(
      lambda: "v1", max_batch_size=16, max_wait=0.5, run=run
    )
    batcher.start()
    try:
      names = ["a", "bad-input", "b", "server-fault", "c"]
      requests = [[protocol.Query({"user_id": n})] for n in names]
      # Two queries in one request: answered or failed together.
      requests.append(
        [protocol.Query({"user_id": "d"}), protocol.Query({"user_id": "e"})]
      )
      return await asyncio.gather(
        *(batcher.submit(r) for r in requests), return_exceptions=True
      ), batcher.stats
    finally:
      await batcher.stop()

  answers, stats = asyncio.run(scenario())
  # All six requests queued before the batcher ran: one batch of 7 queries
  # failed, then each request ran alone (6 more calls).
  assert calls[0] == ["a", "bad-input", "b", "server-fault", "c", "d", "e"]
  assert calls[1:] == [["a"], ["bad-input"], ["b"], ["server-fault"], ["c"],
                       ["d", "e"]]  # fmt: skip
  assert answers[0] == ("v1", [(["a"], [1.0])])
  assert answers[2] == ("v1", [(["b"], [1.0])])
  assert answers[4] == ("v1", [(["c"], [1.0])])
  assert answers[5] == ("v1", [(["d"], [1.0]), (["e"], [1.0])])
  # The model refused a value: the client's fault, 400.
  assert isinstance(answers[1], protocol.RequestError)
  assert answers[1].status == 400 and "bad value" in answers[1].message
  # Anything else is the server's: 500, with no detail for the client.
  assert isinstance(answers[3], protocol.RequestError)
  assert answers[3].status == 500 and "broken" not in answers[3].message
  assert stats.failed_batches == 1 and stats.failed_requests == 2
  assert stats.requests == 4 and stats.queries == 5


def _post(connection, body: bytes):
  connection.request("POST", PREDICT, body=body)
  response = connection.getresponse()
  return response.status, response.read()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  return trained_run(str(tmp_path_factory.mktemp("isolation")))


def test_a_bad_request_under_load_fails_only_itself(run):
  """8 clients x 40 valid requests, and a surrogate request every 50 ms."""
  # A gathering window (batches of two or more requests wait 20 ms for more)
  # makes bad requests share their batch with valid ones, which is what
  # failed them before.
  flags = ("--nosamples", "--batch_wait_ms=20")
  with serve_binary(run["workdir"], *flags) as (process, url):
    port = int(url.rsplit(":", 1)[1])
    queries = raw_queries(run["prepared"], list(range(16)))
    per_client, clients = 40, 8
    results = {"valid": [], "bad": []}
    lock = threading.Lock()
    stop = threading.Event()
    deadline = time.monotonic() + 240

    def client(seed):
      connection = http.client.HTTPConnection("127.0.0.1", port, TIMEOUT)
      try:
        for i in range(per_client):
          if time.monotonic() > deadline:
            break
          query = queries[(seed * per_client + i) % len(queries)]
          body = json.dumps({"instances": [query], "top_k": 5}).encode()
          status, data = _post(connection, body)
          ok = status == 200 and len(json.loads(data)["predictions"]) == 1
          with lock:
            results["valid"].append(ok or (status, data[:200]))
      finally:
        connection.close()

    def bad_client():
      connection = http.client.HTTPConnection("127.0.0.1", port, TIMEOUT)
      body = SURROGATE_BODIES[0][0].encode()
      try:
        while not stop.is_set() and time.monotonic() < deadline:
          status, data = _post(connection, body)
          with lock:
            results["bad"].append((status, json.loads(data)))
          stop.wait(0.05)
      finally:
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    bad = threading.Thread(target=bad_client)
    bad.start()
    for t in threads:
      t.start()
    for t in threads:
      t.join(TIMEOUT * 4)
    stop.set()
    bad.join(TIMEOUT)

    assert len(results["valid"]) == per_client * clients
    assert [r for r in results["valid"] if r is not True] == []
    assert results["bad"], "no bad request was sent"
    for status, value in results["bad"]:
      assert status == 400
      assert value["error"].startswith("instances[0].user_id: not valid")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
