"""The conditioners of one model, used as one (none: unconditional; text + concat: the paper's hybrid).

Parameters are {conditioner name: its parameters} for the conditioners that have any. Classifier-free
guidance dropout draws one Bernoulli per example: a dropped example gets every conditioner's null
condition together (a 'keep' concat condition stays), which is the unconditional branch sampling uses.
Image-shaped conditions of several conditioners reach the UNet as one `concat`, stacked along channels in
the order of the conditioners (e.g. inpainting's mask and masked latent, then a segmentation map).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from latent_diffusion.conditioning.base import Conditioner


def merge_params(trainable: dict, frozen: dict) -> dict:
  """{name: {**trainable[name], **frozen[name]}}: one conditioner may hold both kinds (never the same key)."""
  merged = {name: dict(params) for name, params in trainable.items()}
  for name, params in frozen.items():
    overlap = merged.get(name, {}).keys() & params.keys()
    if overlap:
      raise ValueError(f"Conditioner {name!r} has {sorted(overlap)} both trained and frozen.")
    merged.setdefault(name, {}).update(params)
  return merged


class Conditioning:
  """Several conditioners as one; the same methods as a Conditioner, merged by field."""

  def __init__(self, conditioners: Sequence[Conditioner], drop_prob: float = 0.0):
    names = [c.name for c in conditioners]
    if len(set(names)) != len(names):
      raise ValueError(f"Conditioners {names} repeat a kind (config.ldm.conditioning.kinds).")
    if not 0.0 <= drop_prob < 1.0:
      raise ValueError(f"Condition drop probability {drop_prob} must be in [0, 1) (config.ldm.conditioning.drop_prob).")
    self.conditioners = {c.name: c for c in conditioners}
    self.drop_prob = float(drop_prob)
    fields = [f for c in conditioners for f in c.input_fields()]
    if len(set(fields)) != len(fields):
      raise ValueError(f"Conditioners {names} read the same input field twice: {fields}.")

  def __getitem__(self, name: str) -> Conditioner:
    return self.conditioners[name]

  def __contains__(self, name: str) -> bool:
    return name in self.conditioners

  @property
  def kinds(self) -> tuple[str, ...]:
    return tuple(self.conditioners)

  def unet_fields(self) -> dict:
    fields = {}
    for c in self.conditioners.values():
      fields.update(c.unet_fields())
    return fields

  def input_fields(self) -> tuple[str, ...]:
    return tuple(f for c in self.conditioners.values() for f in c.input_fields())

  def batch_fields(self) -> tuple[str, ...]:
    return tuple(f for c in self.conditioners.values() for f in c.batch_fields())

  @property
  def reads_image(self) -> bool:
    return any(c.reads_image for c in self.conditioners.values())

  @property
  def guided(self) -> bool:
    """Whether any null condition differs from its condition (classifier-free guidance can act)."""
    return any(c.guided for c in self.conditioners.values())

  def with_first_stage(self, autoencoder, params, scale_factor: float | None) -> "Conditioning":
    """Every conditioner bound to the first stage (see Conditioner.with_first_stage)."""
    return Conditioning([c.with_first_stage(autoencoder, params, scale_factor) for c in self.conditioners.values()],
                        self.drop_prob)

  def request_grid(self, inputs: dict) -> tuple[int, int] | None:
    """The latent grid the request's image-shaped conditions fix (they must agree), or None."""
    grids = {}
    for name, c in self.conditioners.items():
      grid = c.request_grid({f: inputs[f] for f in c.input_fields()})
      if grid is not None:
        grids[name] = tuple(int(g) for g in grid)
    if len(set(grids.values())) > 1:
      raise ValueError(f"The request's conditions fix different latent grids: {grids}; give them at one image size.")
    return next(iter(grids.values()), None)

  def prepare(self, example: dict) -> dict | None:
    """The example's model inputs, or None if a conditioner drops it."""
    inputs = {}
    for c in self.conditioners.values():
      prepared = c.prepare(example)
      if prepared is None:
        return None
      inputs.update(prepared)
    return inputs

  def _merged(self, method: str, *args) -> dict:
    out = {}
    for c in self.conditioners.values():
      out.update(getattr(c, method)(*args))
    return out

  def request_inputs(self, request: dict, num: int) -> dict:
    return self._merged("request_inputs", request, num)

  def null_request_inputs(self, request: dict, num: int) -> dict:
    return self._merged("null_request_inputs", request, num)

  def example_inputs(self, batch_size: int, latent_shape) -> dict:
    return self._merged("example_inputs", batch_size, latent_shape)

  def init_params(self, rng) -> dict:
    params = {name: c.init_params(jax.random.fold_in(rng, i)) for i, (name, c) in enumerate(self.conditioners.items())}
    return {name: p for name, p in params.items() if p}

  def abstract_params(self) -> dict:
    params = {name: c.abstract_params() for name, c in self.conditioners.items()}
    return {name: p for name, p in params.items() if p}

  def frozen_params(self) -> dict:
    params = {name: c.frozen_params() for name, c in self.conditioners.items()}
    return {name: p for name, p in params.items() if p}

  def unet_kwargs(self, params: dict, inputs: dict) -> dict:
    return self._kwargs("unet_kwargs", params, inputs)

  def null_unet_kwargs(self, params: dict, inputs: dict) -> dict:
    return self._kwargs("null_unet_kwargs", params, inputs)

  def sampler_kwargs(self, params: dict, inputs: dict) -> dict:
    """Sampler inputs beyond the UNet's (inpainting's mask / x0_known), from the conditioners that give any."""
    out = {}
    for name, c in self.conditioners.items():
      given = c.sampler_kwargs(params.get(name, {}), {f: inputs[f] for f in c.input_fields()})
      if out.keys() & given.keys():
        raise ValueError(f"Conditioner {name!r} sets sampler inputs {sorted(out.keys() & given.keys())} another "
                         f"conditioner of {self.kinds} sets too.")
      out.update(given)
    return out

  def first_stage_image(self, image: np.ndarray) -> np.ndarray:
    for c in self.conditioners.values():
      image = c.first_stage_image(image)
    return image

  def pixels(self, decoded, inputs: dict):
    for c in self.conditioners.values():
      decoded = c.pixels(decoded, {f: inputs[f] for f in c.input_fields()})
    return decoded

  def _kwargs(self, method: str, params: dict, inputs: dict) -> dict:
    out = {}
    for name, c in self.conditioners.items():
      own = {f: inputs[f] for f in c.input_fields()}
      for key, value in getattr(c, method)(params.get(name, {}), own).items():
        if key == "concat" and key in out:      # image-shaped conditions stack along channels
          value = jnp.concatenate([out[key], value.astype(out[key].dtype)], axis=-1)
        elif key in out:
          raise ValueError(f"Conditioner {name!r} gives the UNet {key!r}, which another conditioner of "
                           f"{self.kinds} gives too.")
        out[key] = value
    return out

  def train_inputs(self, batch: dict, rng: jax.Array) -> dict:
    """Model inputs of a training batch (batch_fields), each conditioner drawing its per-step randomness."""
    inputs = {}
    for i, c in enumerate(self.conditioners.values()):
      inputs.update(c.train_inputs({f: batch[f] for f in c.batch_fields()}, jax.random.fold_in(rng, i + 1)))
    return inputs

  def train_unet_kwargs(self, params: dict, batch: dict, rng: jax.Array) -> dict:
    """UNet kwargs of a training batch (batch_fields), each example replaced by the null condition with
    probability drop_prob."""
    inputs = self.train_inputs(batch, rng)
    kwargs = self.unet_kwargs(params, inputs)
    if not kwargs or self.drop_prob == 0.0:
      return kwargs
    batch = jax.tree.leaves(inputs)[0].shape[0]
    drop = jax.random.bernoulli(rng, self.drop_prob, (batch,))                  # [B]
    null = self.null_unet_kwargs(params, inputs)
    pick = lambda c, n: jnp.where(drop.reshape((batch,) + (1,) * (c.ndim - 1)), n.astype(c.dtype), c)
    return jax.tree.map(pick, kwargs, null)

  def describe(self) -> str:
    return " + ".join(self.kinds) or "unconditional"


def stack_inputs(examples: Sequence[dict]) -> dict:
  """[{field: array}] -> {field: array [N, ...]} (host)."""
  return {name: np.stack([e[name] for e in examples]) for name in examples[0]} if examples else {}
