"""Checks that `tf.keras` is Keras 2, which TFRS requires."""

import os


def ensure_legacy_keras() -> None:
  """Raises ImportError with a remedy when `tf.keras` is Keras 3.

  Raises:
    ImportError: `tf.keras` was resolved to Keras 3 before tfr_ssl was
      imported (for example `tf.keras` was used, or TF_USE_LEGACY_KERAS=0).
  """
  import tensorflow as tf

  name = getattr(tf.keras, "__name__", "")
  if not name.startswith("tf_keras"):
    raise ImportError(
      "tfr_ssl needs Keras 2 (the tf-keras package) behind tf.keras, but "
      f"tf.keras is {name!r} (TF_USE_LEGACY_KERAS="
      f"{os.environ.get('TF_USE_LEGACY_KERAS')!r}). Import tfr_ssl before "
      "touching tf.keras, or run with TF_USE_LEGACY_KERAS=1 set in the "
      "environment."
    )
