"""tfr_ssl: two-tower retrieval with logQ correction and self-supervision.

TensorFlow Recommenders needs Keras 2 (`tf_keras`). TensorFlow picks the Keras
behind `tf.keras` from `TF_USE_LEGACY_KERAS` when `tf.keras` is first touched,
so importing this package sets that variable before anything else and then
checks that it took effect.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from tfr_ssl import _keras_check

_keras_check.ensure_legacy_keras()

__version__ = "0.1.0"
