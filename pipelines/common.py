"""Flags shared by the binaries, generated from the config dataclasses.

Every config field becomes a flag named after its leaf (`--temperature` is
ambiguous, so it becomes `--model_temperature` and `--ssl_temperature`; a
unique leaf such as `--alpha` keeps its name). Only flags given on the command
line override the base config, which is `Config()` or `--config=FILE`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import sys
import typing

from absl import flags

from tfr_ssl import config as config_lib

FLAGS = flags.FLAGS


class _DropChatter(logging.Filter):
  """Drops TensorFlow's per-save debugging lines from the binaries' logs."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "Sharding callback duration" not in record.getMessage()


logging.getLogger("absl").addFilter(_DropChatter())

# Short names for fields whose leaf is ambiguous but has an obvious owner.
_ALIASES = {"seed": "train.seed", "data_dir": "data.data_dir"}


def _flag_names() -> dict[str, tuple[str, object, object]]:
  """Maps flag name -> (dotted config path, field, type)."""
  rows = config_lib.fields_of(config_lib.Config)
  leaves = collections.Counter(path.rsplit(".", 1)[-1] for path, _, _ in rows)
  names = {}
  for path, field, kind in rows:
    leaf = path.rsplit(".", 1)[-1]
    if leaves[leaf] == 1:
      name = leaf
    else:
      name = "_".join(path.split(".")[-2:])
    names[name] = (path, field, kind)
  for alias, path in _ALIASES.items():
    for _, (p, field, kind) in list(names.items()):
      if p == path:
        names[alias] = (path, field, kind)
  return names


def define_config_flags() -> None:
  """Defines one flag per config field (idempotent), plus --config."""
  if "config" in FLAGS:
    return
  flags.DEFINE_string("config", None, "JSON config file used as the base.")
  for name, (path, field, kind) in sorted(_flag_names().items()):
    help_text = f"{field.metadata.get('help', '')} [{path}]"
    if field.default_factory is dataclasses.MISSING:
      default = field.default
    else:
      default = field.default_factory()
    choices = field.metadata.get("choices")
    if choices:
      flags.DEFINE_enum(name, default, list(choices), help_text)
    elif kind is bool:
      flags.DEFINE_bool(name, default, help_text)
    elif kind is int:
      flags.DEFINE_integer(name, default, help_text)
    elif kind is float:
      flags.DEFINE_float(name, default, help_text)
    elif typing.get_origin(kind) is tuple:
      flags.DEFINE_list(name, [str(v) for v in default], help_text)
    else:
      flags.DEFINE_string(name, default, help_text)


def config_from_flags(
  base: config_lib.Config | None = None,
) -> config_lib.Config:
  """The base config with every flag given on the command line applied.

  Raises:
    app.UsageError: a config value is invalid (names the flag).
  """
  from absl import app

  if base is None:
    base = config_lib.Config()
    if FLAGS.config:
      base = load_config(FLAGS.config)
  overrides = {path: value for path, (_, value) in _given_flags().items()}
  try:
    return base.override(overrides)
  except ValueError as e:
    raise app.UsageError(str(e)) from None


def section_overrides(section: str) -> dict[str, object]:
  """Flags given on the command line for one config section.

  Raises:
    app.UsageError: a flag of another section was given (it cannot change
      an existing run).
  """
  from absl import app

  overrides = {}
  for path, (name, value) in _given_flags().items():
    if not path.startswith(f"{section}."):
      raise app.UsageError(
        f"--{name} cannot change an existing run; this binary takes only "
        f"{section} settings."
      )
    overrides[path] = value
  return overrides


def _given_flags() -> dict[str, tuple[str, object]]:
  """Config path -> (flag name, value) of the config flags given."""
  return {
    path: (name, FLAGS[name].value)
    for name, (path, _, _) in _flag_names().items()
    if name in FLAGS and FLAGS[name].present
  }


def load_config(path: str) -> config_lib.Config:
  """Reads a config JSON file, with errors that name the file."""
  from absl import app

  try:
    with open(path) as f:
      return config_lib.Config.from_json(f.read())
  except FileNotFoundError:
    raise app.UsageError(f"Config file not found: {path}") from None
  except (ValueError, json.JSONDecodeError) as e:
    raise app.UsageError(f"{path}: {e}") from None


def workdir_config(workdir: str) -> config_lib.Config:
  """The config of an existing run (WORKDIR/config.json)."""
  from absl import app

  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise app.UsageError(
      f"{path} does not exist: is {workdir!r} the workdir of a training "
      "run (pipelines.train --workdir=...)?"
    )
  return load_config(path)


def fail(message: str) -> typing.NoReturn:
  """Prints a one-line error for the user and exits with status 1."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


def user_errors() -> tuple[type[Exception], ...]:
  """Errors that mean bad input or a bad workdir, not a bug: shown briefly."""
  from tfr_ssl import serving, train
  from tfr_ssl.data import errors

  return (
    errors.DataError,
    train.WorkdirError,
    serving.IndexMismatchError,
    FileNotFoundError,
  )


def run_or_fail(fn, *args, **kwargs):
  """Calls fn; a user error becomes one line on stderr and exit status 1."""
  try:
    return fn(*args, **kwargs)
  except user_errors() as e:
    fail(str(e))
