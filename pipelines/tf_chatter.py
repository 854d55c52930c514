"""Quiets TensorFlow's notes about saving that are not about this program.

Saving a SavedModel, TensorFlow logs notes that every export and index build
would print and that need no action: a Keras layer saved without a full
Keras serialization (the index layers are served through their own
signatures, not loaded as Keras layers), functions that were not traced
(only the signatures are called after loading), a lookup table's resource
input renamed, and where the assets and the fingerprint were written.
`TF_CPP_MIN_LOG_LEVEL` does not reach them (they come from Python logging,
through the `tensorflow` and `absl` loggers), so the binaries that save drop
exactly these messages at INFO and WARNING level; every other record, and
these in library use, is kept.
"""

from __future__ import annotations

import logging

# The start of each note's format string (record.msg, before its arguments).
_NOTES = (
  "Skipping full serialization of TF-Keras layer ",
  "Found untraced functions such as ",
  "Function `%s` contains input name(s) ",
  "Assets written to: ",
  "Writing fingerprint to ",
)


class _DropSavingNotes(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno > logging.WARNING:
      return True
    return not str(record.msg).startswith(_NOTES)


_FILTER = _DropSavingNotes()


def quiet_saving_notes() -> None:
  """Drops the saving notes from the loggers TensorFlow uses (idempotent)."""
  for name in ("tensorflow", "absl"):
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
      logger.addFilter(_FILTER)
