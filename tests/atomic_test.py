"""Tests that artifacts are replaced whole or not at all."""

import os

import pytest

from tfr_ssl import atomic


def test_atomic_dir_replaces_old_content(tmp_path):
  target = tmp_path / "artifact"
  target.mkdir()
  (target / "old.txt").write_text("old")
  with atomic.atomic_dir(str(target)) as tmp:
    with open(os.path.join(tmp, "new.txt"), "w") as f:
      f.write("new")
    # Until the block ends, readers still see the old artifact.
    assert (target / "old.txt").exists()
  assert sorted(os.listdir(target)) == ["new.txt"]
  assert sorted(os.listdir(tmp_path)) == ["artifact"]


def test_failure_inside_atomic_dir_keeps_old_artifact(tmp_path):
  target = tmp_path / "artifact"
  target.mkdir()
  (target / "old.txt").write_text("old")
  with pytest.raises(RuntimeError), atomic.atomic_dir(str(target)) as tmp:
    with open(os.path.join(tmp, "half.txt"), "w") as f:
      f.write("half")
    raise RuntimeError("crash while writing")
  assert (target / "old.txt").read_text() == "old"
  # No temporary directory is left behind.
  assert sorted(os.listdir(tmp_path)) == ["artifact"]


def test_write_json_is_readable_and_leaves_no_temp(tmp_path):
  path = tmp_path / "sub" / "m.json"
  atomic.write_json(str(path), {"b": 1, "a": [1, 2]})
  assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
  assert os.listdir(tmp_path / "sub") == ["m.json"]
