"""Flags shared by the binaries, generated from the config dataclasses.

Every config field becomes a flag named after its leaf (`--temperature` is
ambiguous, so it becomes `--model_temperature` and `--ssl_temperature`; a
unique leaf such as `--alpha` keeps its name). Only flags given on the command
line override the base config, which is `Config()` or `--config=FILE`.

`--help` shows a binary's own flags, then the config flags it takes grouped
by section (`data settings`, `model settings`, ...); `--helpfull` adds the
flags of the libraries underneath (TensorFlow's, absl's).

A numeric flag refuses a value out of its field's range (`config.Bounds`)
when the command line is parsed. A bad command line (a value out of range
or of the wrong type, an unknown flag, a stray argument) is one `error:`
line naming the flag, with a pointer to --help (`run`), not the help
itself. Errors a user can fix later on (bad data, a busy or foreign
workdir, a full disk, a read-only directory, a setting out of range in a
--config file) end in one line on stderr and exit status 1 (`run_or_fail`);
anything else is a bug and keeps its trace.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import json
import logging
import math
import os
import sys
import typing
from collections.abc import Callable
from typing import Any

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


def _group(path: str) -> str:
  """The --help heading of a config field: its section's settings."""
  return f"{path.split('.')[0]} settings"


class _InRange(flags.ArgumentParser):
  """Parses a flag with `base`, then refuses a value out of the field's
  declared range (`config.check_value`), so absl rejects it at the flag."""

  def __init__(self, base: flags.ArgumentParser, path: str, kind: object):
    self._base = base
    self._path = path
    bounds, _ = config_lib.bounded_fields()[path]
    if typing.get_origin(kind) is tuple:
      self._item = typing.get_args(kind)[0]
      noun = f"a comma-separated list of {self._item.__name__}s, each"
      self.syntactic_help = f"{noun} {bounds.describe(self._item is float)}"
    else:
      self._item = None
      what = bounds.describe(kind is float)
      noun = "an integer" if kind is int else "a number"
      # "a finite number > 0" names itself; "in [0, 1)" needs a noun.
      self.syntactic_help = what if what.startswith("a ") else f"{noun} {what}"

  def parse(self, argument):
    value = self._base.parse(argument)
    if self._item is not None:
      value = [self._item(v) for v in value]
    try:
      config_lib.check_value(self._path, value)
    except config_lib.ConfigError as e:
      # absl makes it "flag --name=value: <this>".
      raise ValueError(f"{self._path} {e.reason}") from None
    return value

  def flag_type(self) -> str:
    return self._base.flag_type()


class FiniteFloatParser(flags.FloatParser):
  """absl's float parser, refusing inf and nan (nan passes its bounds, inf
  its lower bound).

  For a binary's own float flags (the config's are finite by their range):
  `flags.DEFINE(common.FiniteFloatParser(0, None), name, default, help)`,
  called in the binary so --help lists the flag with the binary's own.
  """

  def parse(self, argument):
    value = super().parse(argument)
    if not math.isfinite(value):
      raise ValueError(f"{value} is not a finite number")
    return value


def define_config_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines one flag per config field (idempotent), plus --config.

  A field with a range (every numeric one: see `config.Bounds`) gets a flag
  that refuses a value out of it when the command line is parsed.
  """
  if "config" in flag_values:
    return
  flags.DEFINE_string(
    "config", None, "JSON config file used as the base.", flag_values
  )
  bounded = config_lib.bounded_fields()
  for name, (path, field, kind) in sorted(_flag_names().items()):
    if name in _ALIASES:
      help_text = f"Short for --{flag_of(path)}. [{path}]"
    else:
      help_text = f"{field.metadata.get('help', '')} [{path}]"
    group = {"flag_values": flag_values, "module_name": _group(path)}
    if field.default_factory is dataclasses.MISSING:
      default = field.default
    else:
      default = field.default_factory()
    choices = field.metadata.get("choices")
    if choices:
      flags.DEFINE_enum(name, default, list(choices), help_text, **group)
    elif kind is bool:
      flags.DEFINE_bool(name, default, help_text, **group)
    elif path in bounded:
      if typing.get_origin(kind) is tuple:
        base, default = flags.ListParser(), [str(v) for v in default]
        serializer = flags.CsvListSerializer(",")
      else:
        base = flags.IntegerParser() if kind is int else flags.FloatParser()
        serializer = None
      parser = _InRange(base, path, kind)
      flags.DEFINE(
        parser, name, default, help_text, serializer=serializer, **group
      )
    elif kind is int:
      flags.DEFINE_integer(name, default, help_text, **group)
    elif kind is float:
      flags.DEFINE_float(name, default, help_text, **group)
    elif typing.get_origin(kind) is tuple:
      flags.DEFINE_list(name, [str(v) for v in default], help_text, **group)
    else:
      flags.DEFINE_string(name, default, help_text, **group)


def grouped_help(*sections: str) -> None:
  """Makes --help show the binary's flags, then these config sections'.

  absl's short help lists only the main module's flags; the config flags
  are registered under one heading per section (`train settings`, ...).
  """
  own = FLAGS.main_module_help

  def main_module_help() -> str:
    parts = [own()]
    if "config" in FLAGS:
      parts.append(
        "config file:\n" + FLAGS.module_help(__name__).split("\n", 1)[-1]
      )
    parts += [FLAGS.module_help(f"{section} settings") for section in sections]
    return "\n\n".join(p for p in parts if p.strip())

  # An instance attribute: FlagValues.__setattr__ would treat it as a flag.
  FLAGS.__dict__["main_module_help"] = main_module_help


def flag_of(path: str) -> str:
  """The flag name of a dotted config field (`train.batch_size` ->
  `train_batch_size`)."""
  for name, (p, _, _) in _flag_names().items():
    if p == path and name not in _ALIASES:
      return name
  return path


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
    config = base.override(overrides)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  check(config)
  return config


def check(config: config_lib.Config) -> None:
  """Refuses settings out of range with a one-line error naming the flag."""
  from absl import app

  from tfr_ssl.training import workdir

  try:
    workdir.check_config(config)
  except workdir.ConfigError as e:
    raise app.UsageError(_config_error(e)) from None


def _config_error(e) -> str:
  return f"--{flag_of(e.path)} ({e.path}): {e.reason}"


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


def run(main: Callable[[list[str]], Any]) -> None:
  """`app.run(main)`, with a bad command line as one line, not the help.

  absl prints the whole --help (hundreds of lines: every config flag)
  before the message of an `app.UsageError`, and two lines of its own for
  a flag it cannot parse. Here both become one `error:` line naming the
  flag, with a pointer to --help, and exit status 1.
  """
  from absl import app

  def main_with_usage_errors(argv: list[str]) -> Any:
    try:
      return main(argv)
    except app.UsageError as e:
      usage_error(str(e))

  app.run(main_with_usage_errors, flags_parser=parse_flags)


def parse_flags(
  argv: list[str], flag_values: flags.FlagValues = FLAGS
) -> list[str]:
  """Parses the command line; a bad or unknown flag is one `error:` line.

  Returns:
    The arguments left after the flags (argv[0] first).
  """
  try:
    return flag_values(argv)
  except flags.Error as e:
    usage_error(str(e))


def usage_error(message: str) -> typing.NoReturn:
  """`fail` for a bad command line: the message and where help is."""
  fail(f"{message} (see {_program()} --help)")


def _program() -> str:
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  if getattr(spec, "name", None) and spec.name != "__main__":
    return f"python -m {spec.name}"
  return os.path.basename(sys.argv[0]) if sys.argv else "the binary"


# An error line quotes at most this much (a 2-million-column header once
# made a 23 MB line).
MAX_ERROR_CHARS = 2000


def fail(message: str) -> typing.NoReturn:
  """Prints a one-line error for the user and exits with status 1."""
  message = " ".join(str(message).split("\n")).strip()
  if len(message) > MAX_ERROR_CHARS:
    cut = len(message) - MAX_ERROR_CHARS
    message = f"{message[:MAX_ERROR_CHARS]}... ({cut} more characters)"
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


def user_errors() -> tuple[type[Exception], ...]:
  """Errors that mean bad input or a bad workdir, not a bug: shown briefly."""
  from tfr_ssl import workflow
  from tfr_ssl.data import errors
  from tfr_ssl.model import two_tower as model
  from tfr_ssl.serving import retrieval as serving
  from tfr_ssl.training import distribute, workdir

  return (
    errors.DataError,
    distribute.DistributeError,
    workdir.WorkdirError,
    workdir.ConfigError,
    model.ModelConfigError,
    workflow.QueryError,
    serving.IndexMismatchError,
  )


# OSErrors about the place, not the program: shown as one line.
_SYSTEM_ERRNOS = {
  errno.ENOSPC: "the disk is full",
  errno.EDQUOT: "the disk quota is exceeded",
  errno.EROFS: "the file system is read-only",
  errno.EACCES: "permission denied",
  errno.EPERM: "operation not permitted",
  errno.ENOENT: "no such file or directory",
  errno.ENOTDIR: "not a directory",
  errno.EISDIR: "is a directory",
  errno.EEXIST: "already exists",
  errno.EIO: "input/output error",
}
# TensorFlow's wording of the same faults (its file system layer raises
# ResourceExhaustedError, PermissionDeniedError, ... with this text).
_TF_PHRASES = (
  "No space left on device",
  "Disk quota exceeded",
  "Read-only file system",
  "Permission denied",
  "No such file or directory",
)


def system_error(e: BaseException) -> str | None:
  """One line for a fault of the disk or the file system, else None."""
  if isinstance(e, OSError) and e.errno in _SYSTEM_ERRNOS:
    where = e.filename or ""
    what = _SYSTEM_ERRNOS[e.errno]
    return f"{where}: {what} ({e.strerror})" if where else f"{what} ({e})"
  if type(e).__module__.startswith("tensorflow"):
    text = str(getattr(e, "message", e))
    for phrase in _TF_PHRASES:
      if phrase in text:
        line = next((x for x in text.splitlines() if phrase in x), phrase)
        return f"TensorFlow could not write or read a file: {line.strip()}"
    if type(e).__name__ == "ResourceExhaustedError":
      return f"out of resources: {text.splitlines()[0] if text else e}"
  return None


def run_or_fail(fn, *args, **kwargs):
  """Calls fn; a user error becomes one line on stderr and exit status 1."""
  from tfr_ssl.training import workdir

  try:
    return fn(*args, **kwargs)
  except workdir.ConfigError as e:
    fail(_config_error(e))
  except user_errors() as e:
    fail(str(e))
  except Exception as e:
    message = system_error(e)
    if message is None:
      raise
    fail(message)
