"""A workdir you can trust: one writer at a time, settings that are true.

A workdir holds one run (docs/architecture.md, "The workdir contract"). Three
things keep it honest, and they live here so that every binary that writes a
workdir (train, export, build_index, evaluate) does them the same way:

- **The lock.** A writer holds an exclusive `flock` on WORKDIR/.lock for its
  whole life. The kernel drops it when the process ends, even on `kill -9`,
  so a lock is never stale; a second writer fails at once with one line
  naming the holder (recorded in the lock file, and cleared when it ends
  cleanly) instead of interleaving its checkpoints with the first one's.
- **Stale temporaries.** Artifacts are written to `.NAME.tmp-*` siblings and
  renamed into place (`tfr_ssl.atomic`); TensorFlow writes a checkpoint to a
  `*_temp` folder before it lists it in `checkpoints/checkpoint`. A killed
  writer leaves those behind. Whoever takes the lock next is the only writer,
  so it removes them.
- **Recorded settings.** A setting that changes what a resumed run computes
  (the data, the model, the optimizer, the batch sizes, the seed, ...) is
  fixed for the workdir: a resumption with another value is refused in one
  line instead of silently mixing two runs. Settings that only say how long
  or how often (epochs, logging, checkpointing, validation size, patience)
  may change; config.json then records the new value and
  `config_changes.json` the step from which it applies. The data itself is
  pinned by dataset.json: its version, and the key of the raw source, so an
  edit of the data after training is refused by name instead of ending in a
  shape mismatch while restoring.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterator

from tfr_ssl import atomic
from tfr_ssl import config as config_lib

LOCK_FILE = ".lock"
CONFIG_FILE = "config.json"
DATASET_FILE = "dataset.json"
CHANGES_FILE = "config_changes.json"
CHECKPOINT_DIR = "checkpoints"

# train.* fields that only say how long or how often: a resumed run may
# change them. Every other train.* field, and every data.* (but cache_dir),
# model.* and ssl.* field, changes what the run computes and is fixed.
FREE_TRAIN_FIELDS = (
  "epochs",
  "log_every",
  "steps_per_loop",
  "checkpoint_every",
  "validation_examples",
  "early_stopping_patience",
)
# Where the data is cached does not change what it is (its version does).
_FREE_DATA_FIELDS = ("cache_dir",)
# Sections training does not read; evaluate and build_index use their
# current values.
_FREE_SECTIONS = ("eval", "index")

_STALE = re.compile(r"^\..+\.(tmp|old)-[^/]*$")


class WorkdirError(ValueError):
  """The workdir cannot be used as asked (another run, busy, missing)."""


class WorkdirBusyError(WorkdirError):
  """Another process holds the workdir's lock."""


# A setting out of its range (`path`, `reason`); raised by check_config.
ConfigError = config_lib.ConfigError


# workdir -> (open lock file, depth): the lock is reentrant in a process, so
# a library call that locks may call another that locks the same workdir.
_HELD: dict[str, list] = {}


@contextlib.contextmanager
def lock(workdir: str, create: bool = False) -> Iterator[str]:
  """Holds the workdir's exclusive lock; yields the absolute workdir.

  On first entry (per process) stale temporaries are removed. With `create`
  the workdir is made if missing, and removed again on the way out if it
  still holds nothing but the lock file (a run refused before it claimed
  the workdir leaves nothing behind).

  Raises:
    WorkdirBusyError: another process holds the lock (names it).
    WorkdirError: the workdir is missing (without `create`) or not writable.
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  held = _HELD.get(workdir)
  if held is not None:
    held[1] += 1
    try:
      yield workdir
    finally:
      held[1] -= 1
    return
  created = False
  if not os.path.isdir(workdir):
    if not create:
      raise WorkdirError(
        f"{workdir} does not exist: is it the workdir of a training run "
        f"(pipelines.train --workdir={workdir})?"
      )
    try:
      os.makedirs(workdir)
    except FileExistsError:
      pass
    except OSError as e:
      raise _os_error(workdir, e, "cannot create the workdir") from None
    else:
      created = True
  path = os.path.join(workdir, LOCK_FILE)
  try:
    handle = open(path, "a+")  # noqa: SIM115 (held across the yield)
  except OSError as e:
    raise _os_error(workdir, e, "cannot write into the workdir") from None
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    handle.seek(0)
    holder = handle.read().strip()[:300] or "another process"
    handle.close()
    raise WorkdirBusyError(
      f"{workdir} is in use by {holder}: wait for it to end, or use another "
      "--workdir."
    ) from None
  _HELD[workdir] = [handle, 1]
  try:
    handle.seek(0)
    handle.truncate()
    handle.write(_holder() + "\n")
    handle.flush()
    clean_stale(workdir)
    yield workdir
  finally:
    del _HELD[workdir]
    # Cleared, not removed, while still held: the lock file stays one inode
    # for every process that opens it, and names no holder once released.
    with contextlib.suppress(OSError):
      handle.truncate(0)
    handle.close()
    if created and os.listdir(workdir) == [LOCK_FILE]:
      shutil.rmtree(workdir, ignore_errors=True)


def _holder() -> str:
  program = _main_module()
  if not program or program == "__main__":
    program = os.path.basename(sys.argv[0]) if sys.argv else ""
  program = program or "python"
  started = time.strftime("%Y-%m-%d %H:%M:%S")
  return (
    f"pid {os.getpid()} on {socket.gethostname()} ({program}, started "
    f"{started})"
  )


def _main_module() -> str | None:
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  return getattr(spec, "name", None)


def _os_error(path: str, error: OSError, what: str) -> WorkdirError:
  reason = error.strerror or str(error)
  if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
    reason += " (the workdir must be writable)"
  return WorkdirError(f"{path}: {what}: {reason}")


def clean_stale(workdir: str) -> list[str]:
  """Removes what killed writers left; returns the removed paths.

  Only safe under the lock: `.NAME.tmp-*` / `.NAME.old-*` siblings of
  atomic artifacts anywhere in the workdir, and checkpoint files that
  `checkpoints/checkpoint` does not list (a save killed before it was
  recorded, including TensorFlow's `*_temp` folders).
  """
  removed = []
  for root, dirs, files in os.walk(workdir):
    for name in list(dirs) + files:
      if _STALE.match(name):
        path = os.path.join(root, name)
        _remove(path)
        removed.append(path)
        if name in dirs:
          dirs.remove(name)
  removed += _clean_checkpoints(os.path.join(workdir, CHECKPOINT_DIR))
  if removed:
    logging.info("Removed %d stale temporaries: %s", len(removed), removed)
  return removed


def _clean_checkpoints(directory: str) -> list[str]:
  if not os.path.isdir(directory):
    return []
  listed = set(_listed_checkpoints(directory))
  removed = []
  for name in os.listdir(directory):
    prefix = re.match(r"^(.+?-\d+)(_temp.*|\.index|\.data-.*)$", name)
    if prefix and (
      prefix.group(2).startswith("_temp") or (prefix.group(1) not in listed)
    ):
      path = os.path.join(directory, name)
      _remove(path)
      removed.append(path)
  return removed


def _listed_checkpoints(directory: str) -> list[str]:
  """Checkpoint prefixes (basenames) recorded in `checkpoints/checkpoint`."""
  try:
    with open(os.path.join(directory, "checkpoint")) as f:
      text = f.read()
  except FileNotFoundError:
    return []
  found = re.findall(r'checkpoint_paths?: "([^"]+)"', text)
  return [os.path.basename(p) for p in found]


def latest_step(workdir: str) -> int | None:
  """The step of the last recorded checkpoint, or None."""
  try:
    with open(os.path.join(workdir, CHECKPOINT_DIR, "checkpoint")) as f:
      found = re.search(r'^model_checkpoint_path: ".*-(\d+)"', f.read(), re.M)
  except FileNotFoundError:
    return None
  return int(found.group(1)) if found else None


def _remove(path: str) -> None:
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path, ignore_errors=True)
  else:
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)


def resolve_paths(config: config_lib.Config) -> config_lib.Config:
  """The config with data_dir, cache_dir and warm_start_from made absolute.

  A workdir must not depend on where its first command ran.
  """

  def absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path)) if path else path

  return config.override(
    {
      "data.data_dir": absolute(config.data.data_dir),
      "data.cache_dir": absolute(config.data.cache_dir),
      "train.warm_start_from": absolute(config.train.warm_start_from),
    }
  )


def is_fixed(path: str) -> bool:
  """Whether the dotted config field `path` is fixed for a workdir."""
  section, _, name = path.partition(".")
  if section in _FREE_SECTIONS:
    return False
  if section == "train":
    return name not in FREE_TRAIN_FIELDS
  if section == "data":
    return name not in _FREE_DATA_FIELDS
  return True


def _flat(values: dict, prefix: str = "") -> dict[str, object]:
  out = {}
  for key, value in values.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def changes(
  old: config_lib.Config, new: config_lib.Config
) -> dict[str, tuple[object, object]]:
  """Dotted field -> (old, new) for every field whose value differs."""
  before, after = _flat(old.to_dict()), _flat(new.to_dict())
  return {
    key: (before.get(key), value)
    for key, value in after.items()
    if before.get(key) != value
  }


def check_resumable(workdir: str, config: config_lib.Config) -> dict:
  """Refuses a config that changes a fixed setting of the workdir's run.

  Args:
    workdir: The (absolute) workdir.
    config: The config of the run about to start (paths resolved).

  Returns:
    The free fields that change: dotted name -> (old, new); empty for a new
    workdir.

  Raises:
    WorkdirError: a fixed setting differs (one line: the first field with
      both values, and how many others).
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return {}
  old = resolve_paths(read_config(workdir))
  changed = changes(old, config)
  fixed = [key for key in changed if is_fixed(key)]
  if fixed:
    key = fixed[0]
    before, after = changed[key]
    more = f" (and {len(fixed) - 1} more: {', '.join(fixed[1:])})"
    raise WorkdirError(
      f"{workdir} holds a run with {key}={before!r}, not {after!r}"
      f"{more if len(fixed) > 1 else ''}: these settings change what a "
      "resumed run computes, so they are fixed for a workdir; use a new "
      "--workdir, or delete this one to start over."
    )
  step = latest_step(workdir)
  epochs = changed.get("train.epochs")
  if epochs and step is not None and epochs[1] < epochs[0]:
    raise WorkdirError(
      f"{workdir} already holds a model of {epochs[0]} epochs (step {step}); "
      f"--epochs={epochs[1]} would not be used: use a new --workdir for a "
      "shorter run."
    )
  return {k: v for k, v in changed.items() if k.startswith("train.")}


def claim(workdir: str, config: config_lib.Config, changed: dict) -> None:
  """Writes config.json, and the step from which changed settings apply."""
  if changed:
    log_path = os.path.join(workdir, CHANGES_FILE)
    entries = _read_json(log_path, [])
    entries.append(
      {
        "from_step": latest_step(workdir) or 0,
        "changed": {k: {"from": a, "to": b} for k, (a, b) in changed.items()},
      }
    )
    atomic.write_json(log_path, entries)
  atomic.write_text(os.path.join(workdir, CONFIG_FILE), config.to_json() + "\n")


def read_config(workdir: str) -> config_lib.Config:
  """WORKDIR/config.json, with errors that name the file."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise WorkdirError(
      f"{path} does not exist: is {workdir} the workdir of a training run "
      f"(pipelines.train --workdir={workdir})?"
    )
  try:
    with open(path) as f:
      return config_lib.Config.from_saved_json(f.read())
  except ValueError as e:
    raise WorkdirError(f"{path}: {e}") from None


def _read_json(path: str, default):
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return default


def dataset_info(prepared) -> dict:
  """What dataset.json records of the data a run trains on."""
  return {
    "version": prepared.version,
    "schema": prepared.schema.to_dict(),
    "vocabularies": prepared.vocabularies,
    "num_items": prepared.num_items,
    "num_queries": prepared.num_queries,
  }


def load_dataset(workdir: str, config: config_lib.Config):
  """The prepared data of the workdir's run, refused if it has changed.

  A new run (no dataset.json) gets `data.load(config.data)`. An existing
  one gets the version it recorded: from the cache when it is there (a
  change of the preparation code alone then changes nothing), else prepared
  again, and in both cases only if the raw data still has the recorded
  source key and the result the recorded schema and vocabularies.

  Returns:
    (prepared dataset, its dataset.json record, whether it is new).

  Raises:
    WorkdirError: the data changed since the run was trained.
    DataError: the raw data cannot be read.
  """
  from tfr_ssl import data as data_lib

  recorded = _read_json(os.path.join(workdir, DATASET_FILE), None)
  key = data_lib.source_key(config.data)
  if recorded is None:
    prepared = data_lib.load(config.data)
    return prepared, {**dataset_info(prepared), "source_key": key}, True
  where = config.data.data_dir or f"the {config.data.source} source settings"
  trained_on = recorded.get("source_key")
  if trained_on is not None and trained_on != key:
    raise WorkdirError(
      f"The data has changed since {workdir} was trained: {where} no longer "
      f"holds the data of dataset {recorded['version']} (recorded in "
      f"{DATASET_FILE}). Restore it, or train a new --workdir on the new data."
    )
  prepared = data_lib.load_version(config.data, recorded["version"])
  if prepared is None:
    prepared = data_lib.load(config.data)
  now = dataset_info(prepared)
  for field in ("schema", "vocabularies", "num_items", "num_queries"):
    if now[field] != recorded[field]:
      raise WorkdirError(
        f"The data has changed since {workdir} was trained: its {field} "
        f"differ from {DATASET_FILE} (dataset {recorded['version']}, now "
        f"{prepared.version}). Restore it, or train a new --workdir on it."
      )
  return prepared, recorded, False


def write_dataset_info(workdir: str, info: dict) -> None:
  atomic.write_json(os.path.join(workdir, DATASET_FILE), info)


# ------------------------------------------------------------------ ranges


def check_config(config: config_lib.Config) -> None:
  """Refuses settings outside their range, before anything is written.

  The ranges are declared with the fields (`config.Bounds`); what needs the
  data (e.g. enough content features for CFM) is checked by the model when
  it is built, still before the workdir is claimed.

  Raises:
    ConfigError: the first setting out of range (names it and its value).
  """
  config_lib.check(config)


__all__ = [
  "ConfigError",
  "WorkdirBusyError",
  "WorkdirError",
  "check_config",
  "check_resumable",
  "claim",
  "clean_stale",
  "load_dataset",
  "lock",
  "read_config",
  "resolve_paths",
]
