"""Artifacts are written to a temporary sibling and renamed into place.

A reader therefore sees either the previous complete artifact or the new
complete one, never a half-written one, even after `kill -9`. A writer killed
mid-way leaves its `.NAME.tmp-*` sibling; the next writer of the workdir
removes it (`tfr_ssl.training.workdir.clean_stale`).

`tempfile` creates files 0600 and directories 0700; the artifacts get the
modes a plain `open` / `mkdir` would give (0666 / 0777 less the umask), so a
serving account in the owner's group can read them where the umask allows.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any


def _umask() -> int:
  """The process umask (read without a window where it is changed)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError):
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_dir(path: str) -> Iterator[str]:
  """Yields a temporary directory that replaces `path` on success.

  The old `path`, if any, stays in place until the new one is complete; on an
  exception the temporary directory is removed and `path` is untouched.

  Args:
    path: The final directory.

  Yields:
    The temporary directory to write into.
  """
  path = os.path.abspath(path)
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
  try:
    os.chmod(tmp, 0o777 & ~_umask())
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  old = None
  if os.path.exists(path):
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
    os.rmdir(old)
    os.rename(path, old)
  os.rename(tmp, path)
  if old:
    shutil.rmtree(old, ignore_errors=True)


def write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path` through a temporary file and a rename."""
  path = os.path.abspath(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(
    prefix=f".{os.path.basename(path)}.tmp-", dir=os.path.dirname(path)
  )
  try:
    os.fchmod(fd, 0o666 & ~_umask())
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def write_text(path: str, text: str) -> None:
  """Writes `text` (UTF-8) to `path` through a temporary file and a rename."""
  write_bytes(path, text.encode("utf-8"))


def write_json(path: str, value: Any) -> None:
  """Writes `value` as indented JSON, atomically."""
  write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")
