"""A seconds-to-compile training stage for the loop's fault tests: a logically partitioned MLP
regression through the real state, step, checkpoint and loop code (training.state / loop)."""

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from latent_diffusion import data, parallel
from latent_diffusion.configs import base
from latent_diffusion.training import loop, state as state_lib

EXAMPLES, FEATURES = 96, 8


class Mlp(nn.Module):
  width: int

  @nn.compact
  def __call__(self, x):
    dense = lambda features, axes, name: nn.Dense(
        features, name=name, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes))
    hidden = nn.gelu(dense(self.width, ("embed", "mlp"), "hidden")(x))
    return dense(1, ("mlp", "embed"), "out")(hidden)[:, 0]


def toy_config(*, width: int = 32, train_steps: int = 12, mesh_shape=(-1, 1, 1), batch_size: int = 16,
               checkpoint_every_steps: int = 4, log_every_steps: int = 1) -> ml_collections.ConfigDict:
  config = base.get_config()
  config.mesh.shape = mesh_shape
  config.data.batch_size = batch_size
  config.toy = ml_collections.ConfigDict(dict(width=width, optim=base.optimizer(lr=3e-3, warmup_steps=2),
                                              loop=base.loop(train_steps)))
  config.toy.loop.checkpoint_every_steps = checkpoint_every_steps
  config.toy.loop.log_every_steps = log_every_steps
  config.toy.loop.eval_every_steps = 10**9
  return config


def toy_data(poisoned: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
  """y = sin(x . w) regression examples; the `poisoned` examples carry a NaN feature."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(EXAMPLES, FEATURES)).astype(np.float32)
  y = np.sin(x @ rng.normal(size=FEATURES)).astype(np.float32)
  x[list(poisoned), 0] = np.nan
  return {"x": x, "y": y}


def toy_stage(config, workdir: pathlib.Path, devices=None, arrays: dict | None = None) -> loop.Stage:
  """The toy stage on a mesh of `devices` (all by default) under workdir/toy."""
  mesh = parallel.make_mesh(config.mesh, devices)
  model = Mlp(config.toy.width)
  tx = state_lib.make_optimizer(config.toy.optim, config.toy.loop.train_steps)
  init = lambda rng: model.init(rng, jnp.zeros((1, FEATURES)))["params"]
  state, shardings = state_lib.create_train_state(init, tx, jax.random.key(0), mesh, config.mesh)

  def loss_fn(params, batch, rng):
    del rng
    loss = jnp.mean(jnp.square(model.apply({"params": params}, batch["x"]) - batch["y"]))
    return loss, {"loss": loss}

  return loop.Stage(
      name="toy", loop_config=config.toy.loop, workdir=pathlib.Path(workdir) / "toy", state=state,
      state_shardings=shardings, step_fn=state_lib.make_train_step(loss_fn, tx, config.toy.loop.ema_decay),
      dataset=data.from_arrays(toy_data() if arrays is None else arrays), batch_size=config.data.batch_size,
      rng=jax.random.key(1), seed=0, meta={"config": config.to_json_best_effort()}, mesh=mesh,
      mesh_config=config.mesh)
