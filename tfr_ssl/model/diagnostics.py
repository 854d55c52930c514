"""How the two losses pull on the shared item tower.

The gradients of L_main and of alpha * L_ssl with respect to the item
tower's variables (the item encoder's tables and unknown embeddings and the
item MLP), taken separately: their norms and cosine. When the SSL gradient
dwarfs the main one, or opposes it, alpha is too large. The training loop
logs them on a fixed probe batch. With the user SSL task, the same for
L_main and beta * L_user_ssl on the query tower (`grad_norm/user_*`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from tfr_ssl.model.two_tower import loss_weights


def gradient_norms(model, inputs: Mapping[str, Any]) -> dict[str, tf.Tensor]:
  """The two losses' gradient norms on the item tower for one batch.

  Evaluation mode (no estimator update, fixed SSL views), so it does not
  disturb training.

  Args:
    model: A `TwoTowerModel`.
    inputs: A batch with `ssl_item`.

  Returns:
    `grad_norm/main`, `grad_norm/ssl` (weighted by alpha),
    `grad_norm/ratio` (ssl / main) and `grad_norm/cosine`.
  """
  seed = model.step_seed(False, anchor=tf.nest.flatten(inputs)[0])
  variables = model.item_tower.trainable_variables
  _, ssl_weight = loss_weights(model.config, "joint")
  with tf.GradientTape(persistent=True) as tape:
    main = model.main_loss(inputs, False, seed)
    ssl = ssl_weight * model.ssl_loss(inputs, False, seed)
  flat = [_flat_gradient(tape, loss, variables) for loss in (main, ssl)]
  del tape
  norms = [tf.norm(g) for g in flat]
  cosine = tf.reduce_sum(flat[0] * flat[1]) / tf.maximum(
    norms[0] * norms[1], 1e-12
  )
  out = {
    "grad_norm/main": norms[0],
    "grad_norm/ssl": norms[1],
    "grad_norm/ratio": norms[1] / tf.maximum(norms[0], 1e-12),
    "grad_norm/cosine": cosine,
  }
  if model.user_ssl is not None and "ssl_user" in inputs:
    out.update(_user_norms(model, inputs, seed))
  return out


def _user_norms(model, inputs, seed) -> dict[str, tf.Tensor]:
  """The same for the user SSL task, on the query tower's variables (its
  own MLP and, through the history, the shared item tables)."""
  variables = model.query_tower.trainable_variables
  with tf.GradientTape(persistent=True) as tape:
    main = model.main_loss(inputs, False, seed)
    user = model.config.ssl.user_alpha * model.user_ssl_loss(
      inputs, False, seed
    )
  flat = [_flat_gradient(tape, loss, variables) for loss in (main, user)]
  del tape
  norms = [tf.norm(g) for g in flat]
  return {
    "grad_norm/query_main": norms[0],
    "grad_norm/user_ssl": norms[1],
    "grad_norm/user_ratio": norms[1] / tf.maximum(norms[0], 1e-12),
    "grad_norm/user_cosine": tf.reduce_sum(flat[0] * flat[1])
    / tf.maximum(norms[0] * norms[1], 1e-12),
  }


def _flat_gradient(tape, loss, variables) -> tf.Tensor:
  grads = tape.gradient(loss, variables)
  return tf.concat(
    [
      tf.reshape(tf.convert_to_tensor(g), [-1])
      if g is not None
      else tf.zeros([tf.size(v)])
      for g, v in zip(grads, variables, strict=True)
    ],
    axis=0,
  )
