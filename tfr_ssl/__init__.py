"""tfr_ssl: two-tower retrieval with logQ correction and self-supervision.

TensorFlow Recommenders needs Keras 2 (`tf_keras`). TensorFlow picks the Keras
behind `tf.keras` from `TF_USE_LEGACY_KERAS` when `tf.keras` is first touched,
so importing this package sets that variable before anything else and then
checks that it took effect.

On a machine without a GPU driver, TensorFlow's first look for devices logs
`E ... cuda_platform.cc ... failed call to cuInit`, which a user reads as the
run failing; importing this package makes that look quietly (see
`_probe_devices_quietly`).
"""

import ctypes
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from tfr_ssl import _keras_check

_keras_check.ensure_legacy_keras()


def _probe_devices_quietly() -> None:
  """Lists the devices once with stderr closed, when no CUDA driver exists.

  The cuInit error is logged once per process, by the first device listing,
  and only says that the driver library is missing, i.e. that TensorFlow
  will use the CPU. The usual remedies silence more than that line or not
  that line at all:
    * TF_CPP_MIN_LOG_LEVEL: the line is an ERROR, so only level 3 hides it,
      and level 3 hides every C++ error of the run, the real ones too.
    * CUDA_VISIBLE_DEVICES="" (or -1): TensorFlow still calls cuInit through
      its stub, which fails the same way without the driver; the line stays.
  So the first listing happens here, with file descriptor 2 pointing to
  /dev/null for its duration (about a millisecond), and only when loading
  the driver library (`libcuda.so.1`, as TensorFlow does) fails: with a
  driver present, a cuInit failure is a real fault and stays visible. The
  listing initialises no logical devices, so a later
  `tf.config.set_logical_device_configuration` still works.
  """
  if not sys.platform.startswith("linux"):
    return
  try:
    ctypes.CDLL("libcuda.so.1")
    return
  except OSError:
    pass
  import tensorflow as tf

  sys.stderr.flush()
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    tf.config.list_physical_devices()
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


_probe_devices_quietly()

__version__ = "0.1.0"
