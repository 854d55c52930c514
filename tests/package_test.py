"""`import tfr_ssl` sets up Keras 2 for TFRS, or says what is wrong."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python(code: str) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
  return subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    cwd=REPO,
    env=env,
  )


def test_plain_import_gives_tfrs_keras_2():
  result = python(
    "import tfr_ssl, tensorflow as tf, tensorflow_recommenders as tfrs\n"
    "print(tf.keras.__name__)"
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip().startswith("tf_keras")


def test_keras_3_touched_first_is_explained():
  # Touching tf.keras before tfr_ssl binds it to Keras 3 for the process.
  result = python("import tensorflow as tf\ntf.keras.layers\nimport tfr_ssl")
  assert result.returncode != 0
  assert "ImportError: tfr_ssl needs Keras 2" in result.stderr
  assert "TF_USE_LEGACY_KERAS=1" in result.stderr


def test_no_cuinit_error_without_a_driver_and_stderr_still_works():
  # Without a CUDA driver TensorFlow's first device listing logs a cuInit
  # ERROR; the import does that listing with stderr closed and reopens it.
  result = python(
    "import sys, tfr_ssl, tensorflow as tf\n"
    "tf.constant(1) + 1\n"
    "print('stderr is open', file=sys.stderr)\n"
    "tf.get_logger().error('python logging reaches stderr')"
  )
  assert result.returncode == 0, result.stderr
  assert "cuInit" not in result.stderr
  assert "stderr is open" in result.stderr
  assert "python logging reaches stderr" in result.stderr
