"""End-to-end tests of the prepare_data binary (run as a subprocess)."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", OMP_NUM_THREADS="1")
  return subprocess.run(
    [sys.executable, "-m", "pipelines.prepare_data", *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_prepares_and_prints_statistics(tmp_path):
  args = [
    "--source=csv",
    f"--data_dir={os.path.join(REPO, 'data', 'example')}",
    f"--cache_dir={tmp_path}",
    "--data_split=temporal",
  ]
  first = run(*args)
  assert first.returncode == 0, first.stderr
  assert first.stdout.startswith("prepared in ")
  assert "items         12" in first.stdout
  assert "dependence between item features, what CFM masks by" in first.stdout


def test_bad_input_is_a_one_line_error(tmp_path):
  raw = tmp_path / "raw"
  raw.mkdir()
  example = os.path.join(REPO, "data", "example")
  for name in ("schema.json", "users.csv", "interactions.csv"):
    with open(os.path.join(example, name)) as f:
      (raw / name).write_text(f.read())
  (raw / "items.csv").write_text("book_id,genre,tags,author,language\nb01,x\n")
  result = run("--source=csv", f"--data_dir={raw}", f"--cache_dir={tmp_path}/c")
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last == (
    f"error: {raw}/items.csv, line 2, column 'tags': expected 5 fields "
    "(as in the header), got 2"
  )
  assert not os.path.exists(tmp_path / "c") or not os.listdir(tmp_path / "c")
