"""The binaries at their edges: refusals before any write, faults while
training, retrieve's input and output, and what export and build_index print.

Every process is a subprocess with a bounded time; the data is built here.
"""

import json
import os
import subprocess

import numpy as np
import pytest

import tfr_ssl  # noqa: F401
from tests.pipelines_test import TINY_RUN, binary
from tests.workdir_test import _mount, one_error_line
from tests.workflow_test import tiny_config
from tfr_ssl.training import train, workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 600


def run(name, *args, stdin=None, merged=False):
  """Runs a binary; with `merged`, stderr goes into stdout (as on a
  terminal, so the order of the lines of both is kept)."""
  return subprocess.run(
    binary(name, *args),
    input=stdin,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT if merged else subprocess.PIPE,
    cwd=REPO,
    timeout=TIMEOUT,
  )


def error_line(result) -> str:
  """`one_error_line` for a run with bytes output."""
  return one_error_line(
    subprocess.CompletedProcess(
      result.args, result.returncode, stderr=result.stderr.decode()
    )
  )


# ------------------------------------------------------------------ train


def test_an_ssl_batch_above_the_corpus_is_one_line_before_any_write(
  tmp_path,
):
  # TINY_RUN's corpus has 300 items; an SSL batch of 100,000 once grew the
  # process to 23.7 GB (a 100,000^2 logit matrix) after claiming the workdir.
  path = tmp_path / "work"
  result = run(
    "train",
    f"--workdir={path}",
    f"--cache_dir={tmp_path / 'cache'}",
    *TINY_RUN,
    "--ssl_batch_size=100000",
  )
  line = error_line(result)
  assert line.startswith("error: --ssl_batch_size (ssl.batch_size): 100000")
  assert "300 items" in line
  assert not path.exists()


def test_a_non_finite_loss_is_one_line_of_its_own_naming_the_step(tmp_path):
  path = tmp_path / "work"
  result = run(
    "train",
    f"--workdir={path}",
    f"--cache_dir={tmp_path / 'cache'}",
    *TINY_RUN,
    "--learning_rate=1e30",  # see train_test: not finite by step 2
    "--log_every=1",
    "--steps_per_loop=1",
    merged=True,
  )
  out = result.stdout.decode()
  assert result.returncode == 1, out[-3000:]
  assert "Traceback" not in out
  # The bar of step 1 was drawn: the error line still starts a line.
  assert "1/" in out
  lines = [x for x in out.splitlines() if "error:" in x]
  assert len(lines) == 1 and lines[0].startswith("error: training stopped at")
  assert "the loss is not finite" in lines[0]
  assert not (path / "checkpoints" / "checkpoint").exists()
  # A clean exit, even a refused one, leaves no holder in the lock file.
  assert (path / workdir.LOCK_FILE).read_text() == ""


def test_a_full_disk_while_checkpointing_leaves_no_temporary(tmp_path):
  full = tmp_path / "full"
  full.mkdir()
  if not _mount("-t", "tmpfs", "-o", "size=192k", "tmpfs", str(full)):
    pytest.skip("mount is not allowed here")
  try:
    # 192 KiB holds config.json, dataset.json and the event file, not a
    # checkpoint of the tiny model (its weights and Adam's two slots).
    result = run(
      "train",
      f"--workdir={full / 'run'}",
      f"--cache_dir={tmp_path / 'cache'}",
      *TINY_RUN,
      "--epochs=1",
      "--checkpoint_every=5",
      "--log_every=1",
      "--validation_examples=200",
      merged=True,
    )
    out = result.stdout.decode()
    assert result.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    lines = [x for x in out.splitlines() if "error:" in x]
    assert len(lines) == 1 and lines[0].startswith("error: "), out[-3000:]
    assert "No space left" in lines[0] or "disk is full" in lines[0]
    checkpoints = full / "run" / "checkpoints"
    left = os.listdir(checkpoints) if checkpoints.exists() else []
    assert not [n for n in left if "_temp" in n], left
  finally:
    subprocess.run(["umount", str(full)], check=False)


# ------------------------------------------ export, build_index, retrieve

NUM_ITEMS, NUM_USERS, PER_USER = 60, 30, 12


def _csv_run(root) -> str:
  """A tiny CSV dataset without timestamps, trained for one epoch."""
  data = root / "data"
  data.mkdir()
  features = [
    {"name": "item", "kind": "categorical", "role": "item"},
    {"name": "genre", "kind": "categorical", "role": "item"},
    {"name": "shelf", "kind": "categorical", "role": "item"},
    {"name": "colour", "kind": "categorical", "role": "item"},
    {"name": "user", "kind": "categorical", "role": "query"},
  ]
  schema = {"item_id": "item", "query_id": "user", "features": features}
  (data / "schema.json").write_text(json.dumps(schema))
  (data / "items.csv").write_text(
    "item,genre,shelf,colour\n"
    + "".join(f"i{k},g{k % 6},s{k % 4},c{k % 5}\n" for k in range(NUM_ITEMS))
  )
  rng = np.random.default_rng(0)
  rows = [
    f"u{u},i{k}\n"
    for u in range(NUM_USERS)
    for k in rng.choice(NUM_ITEMS, PER_USER, replace=False)
  ]
  (data / "interactions.csv").write_text("user,item\n" + "".join(rows))
  config = tiny_config(
    str(root / "cache"),
    **{
      "data.source": "csv",
      "data.data_dir": str(data),
      "train.batch_size": 32,
      "ssl.batch_size": 16,
      "train.epochs": 1,
      "train.validation_examples": 0,
      "index.k": 20,
      "index.audit_queries": 5,
    },
  )
  path = str(root / "work")
  train.train_and_evaluate(config, path)
  return path


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
  """The CSV run, exported and indexed by the binaries (their output kept)."""
  path = _csv_run(tmp_path_factory.mktemp("binaries"))
  steps = {}
  for name in ("export", "build_index"):
    steps[name] = run(name, f"--workdir={path}")
    assert steps[name].returncode == 0, steps[name].stderr.decode()[-3000:]
  return {"workdir": path, "steps": steps}


@pytest.mark.parametrize("name", ["export", "build_index"])
def test_saving_prints_no_tensorflow_notes(indexed, name):
  err = indexed["steps"][name].stderr.decode()
  for note in (
    "Skipping full serialization",
    "Found untraced functions",
    "Assets written to",
  ):
    assert note not in err, err[-3000:]
  # And the lock names no holder once the binary has ended.
  lock = os.path.join(indexed["workdir"], workdir.LOCK_FILE)
  with open(lock) as f:
    assert f.read() == ""


HINT = 'give one JSON object per line, e.g. {"user_id": "42"}'


@pytest.mark.parametrize(
  "stdin, message",
  [
    (b"", "no queries: stdin is empty"),
    (b"\n  \n", "no queries: stdin is empty"),
    (
      b'{"user": "u1"}\n\xff\xfe\n',
      "stdin line 2: bytes b'\\xff' at byte 1 are not UTF-8",
    ),
    (b'{"user": "u1"}\n{"user": u1}\n', "stdin line 2: not JSON"),
    (b"[1, 2]\n", "stdin line 1: a query must be a JSON object"),
    (b'{"user": "\\ud800"}\n', "stdin line 1: feature 'user' holds"),
  ],
)
def test_bad_stdin_is_one_error_line_naming_the_line(indexed, stdin, message):
  result = run("retrieve", f"--workdir={indexed['workdir']}", stdin=stdin)
  line = error_line(result)
  assert line.startswith(f"error: {message}"), line
  assert "USAGE" not in result.stderr.decode()
  if "JSON" in message:  # a hint shows what a line should be
    assert line.endswith(HINT), line


def test_top_k_above_the_index_k_is_refused_as_the_service_does(indexed):
  result = run(
    "retrieve",
    f"--workdir={indexed['workdir']}",
    "--query",
    '{"user": "u1"}',
    "--top_k=100000",
  )
  line = error_line(result)
  # The index of the run returns 20 items (index.k); the service answers
  # 400 "must be from 1 to 20" for the same request.
  assert "100000, more than the 20 items the index returns" in line
  at_bound = run(
    "retrieve",
    f"--workdir={indexed['workdir']}",
    "--query",
    '{"user": "u1"}',
    "--top_k=20",
    "--json",
  )
  assert at_bound.returncode == 0, at_bound.stderr.decode()[-2000:]
  record = json.loads(at_bound.stdout.decode().splitlines()[-1])
  assert len(record["items"]) == 20


def test_a_huge_query_is_not_echoed_back(indexed):
  value = "x" * 1_000_000
  query = json.dumps({"user": value}).encode() + b"\n"
  for flags in ([], ["--json"]):
    result = run(
      "retrieve", f"--workdir={indexed['workdir']}", *flags, stdin=query
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    out = result.stdout.decode()
    assert len(out) < 20_000  # the hits, not the megabyte of input
    assert "(1000000 characters)" in out


def test_a_users_results_leave_out_its_history_which_is_in_file_order(
  indexed,
):
  path = indexed["workdir"]
  _, prepared, _ = train.load_trained_model(path)
  split = prepared.splits["train"]
  keys = prepared.item_keys()
  user = "u3"
  row = prepared.vocabularies["user"].index(user)
  seen = {keys[i] for i in split.item_index[split.query_index == row]}
  result = run("retrieve", f"--workdir={path}", f"--user={user}", "--json")
  assert result.returncode == 0, result.stderr.decode()[-2000:]
  record = json.loads(result.stdout.decode().splitlines()[-1])
  # 10 results out of 60 items, none of the user's own training items.
  assert len(record["items"]) == 10
  assert not {hit["id"] for hit in record["items"]} & seen
  # The history shown is the last 10 training rows of the user, latest
  # first: with no timestamps, that is the file's order reversed.
  order = [keys[i] for i in split.item_index[split.query_index == row]]
  assert [h["id"] for h in record["history"]] == order[::-1][:10]
  text = run("retrieve", f"--workdir={path}", f"--user={user}").stdout.decode()
  assert "last 10 in file order (the data has no timestamps), of " in text
  assert f"of {len(order)} training items; left out of the results):" in text
  assert "most recent" not in text
