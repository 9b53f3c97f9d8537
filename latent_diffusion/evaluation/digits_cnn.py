"""A small digits CNN, trained at evaluation time: the feature network of FID & co. on the quickstart's digits.

Inception features mean little for 16x16 grey digits and its weights are not shipped; this network is trained
on the real training split in seconds (deterministic for a seed), and its penultimate layer (64-d) plays
pool3's role, its logits the Inception Score's. Its validation accuracy is reported with the figures, so a
reader can tell the features are meaningful.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax


class DigitsCNN(nn.Module):
  """images [B, H, W, 1] in [0, 1] -> (features [B, width] (post-ReLU penultimate), logits [B, classes])."""
  num_classes: int = 10
  width: int = 64

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = images * 2.0 - 1.0
    for features in (16, 32):
      # 3x3 convolution as patches @ kernel: XLA:CPU runs the gradients of these small convolutions ~10x
      # slower than the equivalent matmuls.
      patches = jax.lax.conv_general_dilated_patches(x, (3, 3), (1, 1), "SAME",
                                                     dimension_numbers=("NHWC", "OIHW", "NHWC"))
      x = nn.avg_pool(nn.relu(nn.Dense(features)(patches)), (2, 2), (2, 2))
    features = nn.relu(nn.Dense(self.width)(x.reshape(x.shape[0], -1)))
    return features, nn.Dense(self.num_classes)(features)


def train_digits_cnn(images: np.ndarray, labels: np.ndarray, num_classes: int, width: int, train_steps: int,
                     batch_size: int, learning_rate: float, seed: int) -> tuple[DigitsCNN, dict]:
  """(module, params) trained with Adam on images [N, H, W, 1] in [0, 1] with random 1-pixel shifts.

  Runs on this process's first device only (every process trains the same copy from the same seed).
  """
  module = DigitsCNN(num_classes, width)
  rng = jax.random.key(seed)
  params = module.init(rng, jnp.zeros((1, *images.shape[1:])))["params"]
  tx = optax.adamw(learning_rate, weight_decay=1e-4)
  images, labels = jnp.asarray(images), jnp.asarray(labels)

  def loss_fn(params, x, y):
    logits = module.apply({"params": params}, x)[1]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def train(params):
    def step(carry, key):
      params, opt_state = carry
      pick, shift = jax.random.split(key)
      idx = jax.random.randint(pick, (batch_size,), 0, images.shape[0])
      dy, dx = jax.random.randint(shift, (2,), -1, 2)
      x = jnp.roll(images[idx], (dy, dx), axis=(1, 2))
      grads = jax.grad(loss_fn)(params, x, labels[idx])
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None
    keys = jax.random.split(jax.random.fold_in(rng, 1), train_steps)
    return jax.lax.scan(step, (params, tx.init(params)), keys)[0][0]

  return module, jax.device_get(train(params))
