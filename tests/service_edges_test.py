"""The service at its edges: timeouts, errors of the HTTP layer, TF Serving.

Each test runs a real server on a free loopback port
(`service.BackgroundServer`) and stops it in a `finally` with bounded waits.
Sockets carry a timeout, so a server that fails to close a connection fails
the test instead of hanging it; nothing asserts on how long anything took.
"""

import base64
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import urllib.parse

import pytest
from tensorflow.python.tools import saved_model_utils

from tests.serve_test import MODEL, PREDICT, TIMEOUT, call, options, raw_queries
from tests.workflow_test import trained_run
from tfr_ssl import atomic
from tfr_ssl.serving import BackgroundServer
from tfr_ssl.serving import retrieval as serving


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  return trained_run(str(tmp_path_factory.mktemp("edges")))


@pytest.fixture(scope="module")
def server(run):
  background = BackgroundServer(run["workdir"], options(samples=False))
  background.start(timeout=TIMEOUT)
  try:
    yield background
  finally:
    background.stop(timeout=TIMEOUT)


def _address(url):
  parts = urllib.parse.urlsplit(url)
  return parts.hostname, parts.port


def _exchange(url, data: bytes, timeout=TIMEOUT) -> bytes:
  """Sends raw bytes; returns what the server sends until it closes, or
  until one complete reply (as its Content-Length says) has arrived."""
  with socket.create_connection(_address(url), timeout) as s:
    s.settimeout(timeout)
    s.sendall(data)
    reply = b""
    while chunk := s.recv(65536):
      reply += chunk
      head, found, body = reply.partition(b"\r\n\r\n")
      length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
      if found and length and len(body) >= int(length.group(1)):
        break
    return reply


def _parse(reply: bytes):
  """(status, headers lower-cased, body) of a raw HTTP reply."""
  head, _, body = reply.partition(b"\r\n\r\n")
  lines = head.decode("latin-1").split("\r\n")
  status = int(lines[0].split()[1])
  headers = {}
  for line in lines[1:]:
    name, _, value = line.partition(":")
    headers[name.strip().lower()] = value.strip()
  return status, headers, body


# Isolation of failures and timeouts.


def test_idle_and_half_sent_connections_are_closed(run):
  background = BackgroundServer(
    run["workdir"],
    options(
      samples=False, idle_timeout_seconds=0.3, header_timeout_seconds=0.3
    ),
  )
  background.start(timeout=TIMEOUT)
  try:
    # Nothing sent: closed by the idle timeout (recv returns b"" on close;
    # a server that kept it open would hit the socket's timeout instead).
    assert _exchange(background.url, b"") == b""
    # Half a request head: closed by the header timeout, without a reply.
    assert _exchange(background.url, b"GET / HTTP/1.1\r\nHost: x\r\n") == b""
  finally:
    background.stop(timeout=TIMEOUT)


def test_a_body_that_does_not_arrive_gets_408_and_the_connection_closes(run):
  background = BackgroundServer(
    run["workdir"], options(samples=False, body_timeout_seconds=0.5)
  )
  background.start(timeout=TIMEOUT)
  try:
    head = (
      f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    reply = _exchange(background.url, head + b'{"inst')
  finally:
    background.stop(timeout=TIMEOUT)
  status, headers, body = _parse(reply)
  assert status == 408
  assert headers["connection"] == "close"
  assert json.loads(body) == {
    "error": "body: not received in full within 0.5 s"
  }


def test_a_client_dropping_mid_body_logs_one_line(run, caplog):
  caplog.set_level(logging.INFO, logger="tfr_ssl.serving")
  background = BackgroundServer(run["workdir"], options(samples=False))
  background.start(timeout=TIMEOUT)
  try:
    head = (
      f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    with socket.create_connection(_address(background.url), TIMEOUT) as s:
      s.sendall(head + b'{"inst')
    # The handler sees the drop on the server's loop; a status request
    # after it is answered after it on the same loop.
    for _ in range(50):
      call(background.url, path=f"/v1/models/{MODEL}")
      if any("closed the connection" in r.getMessage() for r in caplog.records):
        break
  finally:
    background.stop(timeout=TIMEOUT)
  drops = [r for r in caplog.records if "closed the connection" in r.message]
  assert len(drops) == 1, [r.getMessage() for r in caplog.records]
  assert drops[0].levelno == logging.INFO and drops[0].exc_info is None
  assert PREDICT in drops[0].message
  assert not [r for r in caplog.records if r.exc_info]
  assert "Traceback" not in caplog.text


# Errors of the HTTP layer: JSON, no version banner.

PARSER_ERRORS = [
  # (name, raw request, error must contain)
  ("bad method", b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n", "method: not a valid"),
  (
    "request line over 8 KB",
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "request: the request line or a header is too long",
  ),
  (
    "header over 8 KB",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
    "request: the request line or a header is too long",
  ),
  ("bad version", b"GET / HTTX/1.1\r\n\r\n", "request: not valid HTTP"),
]


@pytest.mark.parametrize(
  "request_bytes, message",
  [case[1:] for case in PARSER_ERRORS],
  ids=[case[0] for case in PARSER_ERRORS],
)
def test_errors_of_the_http_parser_are_json(server, request_bytes, message):
  status, headers, body = _parse(_exchange(server.url, request_bytes))
  assert status == 400
  assert headers["content-type"].startswith("application/json")
  assert message in json.loads(body)["error"]
  assert headers["server"] == "tfr_ssl"


def test_no_reply_names_the_library_or_its_version(server):
  replies = [
    _exchange(server.url, b"G@T / HTTP/1.1\r\n\r\n"),
    _exchange(server.url, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"),
    _exchange(
      server.url,
      f"GET /v1/models/{MODEL} HTTP/1.1\r\nConnection: close\r\n\r\n".encode(),
    ),
  ]
  for reply in replies:
    _, headers, _ = _parse(reply)
    assert headers["server"] == "tfr_ssl"
    head = reply.partition(b"\r\n\r\n")[0].lower()
    assert b"aiohttp" not in head and b"python" not in head


def test_top_k_of_any_size_is_a_400(server):
  for digits in (20, 5000):
    body = b'{"instances": [{"user_id": "1"}], "top_k": ' + b"9" * digits + b"}"
    status, _, value = call(server.url, "POST", PREDICT, raw=body)
    assert status == 400, value
    assert value["error"].startswith(("top_k: must be", "body: a number"))


def test_the_page_sends_a_csp_that_allows_only_its_own_code(server):
  status, headers, text = call(server.url, path="/")
  assert status == 200
  policy = headers["Content-Security-Policy"]
  assert "default-src 'none'" in policy and "'unsafe-inline'" not in policy
  # The page's one script and one style block, allowed by their hashes.
  for tag, directive in (("script", "script-src"), ("style", "style-src")):
    (code,) = re.findall(rf"<{tag}>(.*?)</{tag}>", text, re.S)
    digest = base64.b64encode(hashlib.sha256(code.encode()).digest()).decode()
    assert f"{directive} 'sha256-{digest}'" in policy
  # Inline style attributes and handlers would be blocked: there are none.
  assert not re.search(r"\sstyle=|\son[a-z]+=", text)


# TF Serving compatibility.


def test_status_and_metadata_have_tf_servings_keys(server, run):
  _, _, status = call(server.url, path=f"/v1/models/{MODEL}")
  assert list(status) == ["model_version_status"]
  assert list(status["model_version_status"][0]) == [
    "version",
    "state",
    "status",
  ]
  _, _, meta = call(server.url, path=f"/v1/models/{MODEL}/metadata")
  assert sorted(meta) == ["metadata", "model_spec"]
  assert list(meta["metadata"]) == ["signature_def"]
  assert list(meta["metadata"]["signature_def"]) == ["signature_def"]
  # The tensor names are the SavedModel's own, as read by TF's tools.
  graph = saved_model_utils.get_meta_graph_def(
    os.path.join(run["workdir"], "index"), "serve"
  )
  signatures = meta["metadata"]["signature_def"]["signature_def"]
  for name in ("serving_default", "exclude"):
    expected = graph.signature_def[name]
    for key in ("inputs", "outputs"):
      got = {k: v["name"] for k, v in signatures[name][key].items()}
      assert got == {k: v.name for k, v in getattr(expected, key).items()}
  names = signatures["exclude"]["inputs"]
  assert names["user_id"]["name"] == "exclude_user_id:0"
  assert names["exclude"]["tensor_shape"]["dim"] == [
    {"size": "-1", "name": ""},
    {"size": "-1", "name": ""},
  ]


def test_b64_values_are_decoded_and_null_signature_is_the_default(server, run):
  query = raw_queries(run["prepared"], [0])[0]

  def b64(text):
    return {"b64": base64.b64encode(text.encode()).decode()}

  status, _, plain = call(
    server.url, "POST", PREDICT, {"instances": [query], "top_k": 5}
  )
  assert status == 200
  first = plain["predictions"][0]["ids"][0]
  encoded = {name: b64(value) for name, value in query.items()}
  status, _, value = call(
    server.url,
    "POST",
    PREDICT,
    {
      "instances": [{**encoded, "exclude": [b64(first)]}],
      "top_k": 4,
      "signature_name": None,
    },
  )
  assert status == 200, value
  assert value["predictions"][0]["ids"] == plain["predictions"][0]["ids"][1:5]
  columnar = {"inputs": {n: [v] for n, v in encoded.items()}, "top_k": 5}
  status, _, value = call(server.url, "POST", PREDICT, columnar)
  assert value["outputs"]["ids"] == [plain["predictions"][0]["ids"]]
  for bad, message in (
    ({"b64": "not base64!"}, "instances[0].user_id.b64: not valid base64"),
    ({"b64": "/w=="}, "instances[0].user_id.b64: the decoded bytes are not"),
    ({"b64": 7}, "instances[0].user_id.b64: expected a base64 string"),
  ):
    status, _, value = call(
      server.url, "POST", PREDICT, {"instances": [{"user_id": bad}]}
    )
    assert status == 400 and value["error"].startswith(message), value


def test_labels_are_refused_as_tf_serving_refuses_an_unknown_label(server):
  for method, path, body in (
    ("GET", f"/v1/models/{MODEL}/labels/stable", None),
    ("GET", f"/v1/models/{MODEL}/labels/stable/metadata", None),
    (
      "POST",
      f"/v1/models/{MODEL}/labels/stable:predict",
      {"instances": [{"user_id": "1"}]},
    ),
  ):
    status, _, value = call(server.url, method, path, body)
    assert status == 400
    assert value == {"error": "Unrecognized servable version label: stable"}


# Versions as TF Serving handles them.


def _serving(url):
  _, _, status = call(url, path=f"/v1/models/{MODEL}")
  return {r["version"]: r["state"] for r in status["model_version_status"]}


def test_deleting_the_serving_version_falls_back_to_the_next(
  run, tmp_path, caplog
):
  caplog.set_level(logging.INFO, logger="tfr_ssl.serving")
  base = tmp_path / "versions"
  index = os.path.join(run["workdir"], "index")
  for number in ("1", "2"):
    shutil.copytree(index, base / number)
  background = BackgroundServer(
    run["workdir"], options(index_dir=str(base), samples=False)
  )
  background.start(timeout=TIMEOUT)
  try:
    assert _serving(background.url) == {"2": "AVAILABLE"}
    # Rolling back: delete the newest version, then refresh (SIGHUP).
    shutil.rmtree(base / "2")
    assert background.refresh() == "loaded"
    assert _serving(background.url) == {"1": "AVAILABLE", "2": "END"}
    status, headers, _ = call(
      background.url, "POST", PREDICT, {"instances": [{"user_id": "1"}]}
    )
    assert status == 200 and headers["X-Model-Version"] == "1"
    assert any(
      "Version 2 is gone" in r.message
      and "falling back to version 1" in r.message
      for r in caplog.records
    ), caplog.text
    # Version 2 back on disk: served again (listed once).
    shutil.copytree(index, base / "2")
    assert background.refresh() == "loaded"
    assert _serving(background.url) == {"2": "AVAILABLE", "1": "END"}
  finally:
    background.stop(timeout=TIMEOUT)


def test_the_highest_version_that_loads_serves_from_the_start(run, tmp_path):
  base = tmp_path / "versions"
  shutil.copytree(os.path.join(run["workdir"], "index"), base / "1")
  shutil.copytree(base / "1", base / "2")
  with open(base / "2" / "saved_model.pb", "wb") as f:
    f.write(b"not a SavedModel")
  background = BackgroundServer(
    run["workdir"], options(index_dir=str(base), samples=False)
  )
  background.start(timeout=TIMEOUT)
  try:
    _, _, status = call(background.url, path=f"/v1/models/{MODEL}")
    rows = {r["version"]: r for r in status["model_version_status"]}
    assert rows["1"]["state"] == "AVAILABLE"
    assert rows["2"]["state"] == "END"
    assert rows["2"]["status"]["error_code"] == "FAILED_PRECONDITION"
    # The refused version is passed over, not retried, until it changes.
    assert background.refresh() == "unchanged"
  finally:
    background.stop(timeout=TIMEOUT)


def test_after_a_refused_rebuild_the_status_says_where_each_one_is(
  run, tmp_path
):
  workdir = str(tmp_path / "work")
  shutil.copytree(run["workdir"], workdir)
  index_dir = os.path.join(workdir, "index")
  background = BackgroundServer(workdir, options(samples=False))
  background.start(timeout=TIMEOUT)
  try:
    # A rebuild for another export is renamed into the same path.
    with atomic.atomic_dir(index_dir) as tmp:
      shutil.copytree(index_dir, tmp, dirs_exist_ok=True)
      manifest = serving.read_manifest(tmp)
      manifest["model_id"] = "another-export"
      atomic.write_json(os.path.join(tmp, serving.MANIFEST), manifest)
    assert background.refresh() == "refused"
    _, _, model = call(background.url, path="/ui/model")
    # The serving version 1 came from index_dir, which no longer holds it;
    # what index_dir holds now is the refused version 2.
    assert model["serving"]["version"] == "1"
    assert model["serving"]["path"] == index_dir
    assert model["serving"]["on_disk"] is False
    (refused,) = model["refused"]
    assert refused["version"] == 2 and refused["path"] == index_dir
    assert "model_id" in refused["error"]
  finally:
    background.stop(timeout=TIMEOUT)
