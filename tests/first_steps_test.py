"""The first steps a newcomer takes: the README, the demo, --help, retrieve.

Each test follows a step as a user takes it and checks that it either works
or stops at once with one line naming the flag, field or file.
"""

import json
import os
import re
import subprocess
import sys

import pytest

import tfr_ssl  # noqa: F401
from tests.workflow_test import tiny_config
from tfr_ssl import config as config_lib
from tfr_ssl import workflow
from tfr_ssl.training import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_binary(name, *args, stdin=None):
  return subprocess.run(
    [sys.executable, "-m", f"pipelines.{name}", *args],
    input=stdin,
    capture_output=True,
    cwd=REPO,
    timeout=600,
  )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A tiny run through evaluate, made under umask 027."""
  root = tmp_path_factory.mktemp("first")
  workdir = str(root / "work")
  old = os.umask(0o027)
  try:
    train.train_and_evaluate(
      tiny_config(str(root / "cache"), **{"train.epochs": 1}), workdir
    )
    workflow.export_run(workdir)
    workflow.build_index_run(workdir)
    workflow.evaluate_run(workdir)
  finally:
    os.umask(old)
  return workdir


def test_compare_is_checked_before_evaluating(run, tmp_path):
  metrics = os.path.join(run, "eval", "metrics.json")
  before = os.stat(metrics).st_mtime_ns
  missing = str(tmp_path / "runs" / "baseline")
  with pytest.raises(train.WorkdirError, match="evaluate that run first"):
    workflow.evaluate_run(run, compare=[missing])
  assert os.stat(metrics).st_mtime_ns == before  # nothing was evaluated


def test_artifacts_are_readable_by_the_group_as_the_umask_allows(run):
  for name in (
    "config.json",
    "dataset.json",
    "export/manifest.json",
    "export/items.jsonl",
    "export/query/saved_model.pb",
    "index/manifest.json",
    "eval/metrics.json",
    "best/best.json",
  ):
    mode = os.stat(os.path.join(run, name)).st_mode & 0o777
    assert mode == 0o640, (name, oct(mode))
  for name in ("export", "export/query", "index", "best", "checkpoints"):
    mode = os.stat(os.path.join(run, name)).st_mode & 0o777
    assert mode == 0o750, (name, oct(mode))


@pytest.mark.parametrize(
  "query, k, message",
  [
    ({"user_id": "1"}, 0, "must be >= 1, got 0"),
    ({"user_id": "1"}, -5, "must be >= 1, got -5"),
    ({"user_id": None}, 3, "feature 'user_id' must be a string"),
    ({"user_id": ["1", "2"]}, 3, "feature 'user_id' must be a string"),
    ({"user_id": 7}, 3, 'write it as "7"'),
    ({"colour": "red"}, 3, "unknown query feature"),
  ],
)
def test_retrieve_refuses_bad_k_and_values(run, query, k, message):
  with pytest.raises(workflow.QueryError, match=re.escape(message)):
    workflow.retrieve(run, [{"user_id": "2"}, query], k=k)


def _error_line(result) -> str:
  err = result.stderr.decode()
  assert result.returncode != 0, err
  assert "Traceback" not in err, err
  return err


@pytest.mark.parametrize(
  "args, stdin, message",
  [
    (["--top_k=0"], b'{"user_id": "1"}\n', "--top_k=0"),
    ([], b"", "no queries"),
    ([], b'{"user_id": "1"}\n{"user_id": "\xff"}\n', "stdin line 2"),
    ([], b'{"user_id": null}\n', "query 1: feature 'user_id' must be"),
    (["--user=nobody"], None, "--user='nobody' is not a user_id"),
  ],
)
def test_retrieve_binary_errors_are_one_line(run, args, stdin, message):
  result = run_binary("retrieve", f"--workdir={run}", *args, stdin=stdin)
  assert message in _error_line(result)


def test_retrieve_for_a_user_shows_the_history_beside_the_results(run):
  user = "1"
  result = run_binary(
    "retrieve", f"--workdir={run}", f"--user={user}", "--json"
  )
  assert result.returncode == 0, result.stderr.decode()[-2000:]
  record = json.loads(result.stdout.decode().splitlines()[-1])
  assert record["query"]["user_id"] == user
  assert len(record["items"]) == 10
  _, prepared, _ = train.load_trained_model(run)
  split = prepared.splits["train"]
  row = prepared.vocabularies["user_id"].index(user)
  seen = {
    prepared.item_keys()[i] for i in split.item_index[split.query_index == row]
  }
  assert record["history"]
  assert {h["id"] for h in record["history"]} <= seen
  text = run_binary(
    "retrieve", f"--workdir={run}", f"--user={user}", "--top_k=3"
  )
  out = text.stdout.decode()
  assert "history (" in out and "retrieved:" in out


def test_help_shows_the_binarys_flags_grouped_and_helpfull_the_rest():
  short = run_binary("train", "--help").stdout.decode()
  assert "--workdir" in short
  for heading in ("data settings:", "model settings:", "train settings:"):
    assert heading in short
  assert "--train_batch_size" in short
  assert "--tpu" not in short and "--xla" not in short
  full = run_binary("train", "--helpfull").stdout.decode()
  assert len(full.splitlines()) > len(short.splitlines())
  # Each seed says what it seeds; --seed is the short name of --train_seed.
  assert "--seed: Short for --train_seed." in full
  assert "--train_seed: Seed of the run" in full
  assert "--data_seed: Seed of the split" in full
  index = run_binary("build_index", "--help").stdout.decode()
  assert "index settings:" in index and "train settings:" not in index


def _section(text: str, title: str) -> str:
  start = text.index(f"## {title}")
  end = text.find("\n## ", start + 1)
  return text[start : end if end > 0 else None]


def test_readme_commands_use_no_path_of_the_development_setup():
  with open(os.path.join(REPO, "README.md")) as f:
    readme = f.read()
  steps = _section(readme, "The pipeline, step by step")
  assert "../shared" not in steps
  # The embedded synthetic data comes first, MovieLens from the user's own
  # download (and where to get it).
  assert steps.index("--source=synthetic") < steps.index("--source=movielens")
  assert "grouplens.org" in steps
  # Every run --compare names is made before step 5.
  for other in re.findall(r"--compare=(\S+)", steps):
    made = steps.index(f"--workdir={other}")
    assert made < steps.index(f"--compare={other}"), other


def test_the_demo_retrieves_for_a_real_user_and_shows_the_history():
  with open(os.path.join(REPO, "Makefile")) as f:
    line = next(x for x in f if "pipelines.retrieve" in x)
  user = re.search(r"--user=(\S+)", line)
  assert user, line
  assert 0 <= int(user.group(1)) < config_lib.Config().data.synthetic.num_users
