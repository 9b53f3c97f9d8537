"""The conditioners of one model, used as one (none: unconditional; text + concat: the paper's hybrid).

Parameters are {conditioner name: its parameters} for the conditioners that have any. Classifier-free
guidance dropout draws one Bernoulli per example: a dropped example gets every conditioner's null
condition together (a 'keep' concat condition stays), which is the unconditional branch sampling uses.
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

  def _kwargs(self, method: str, params: dict, inputs: dict) -> dict:
    out = {}
    for name, c in self.conditioners.items():
      own = {f: inputs[f] for f in c.input_fields()}
      out.update(getattr(c, method)(params.get(name, {}), own))
    return out

  def train_unet_kwargs(self, params: dict, inputs: dict, rng: jax.Array) -> dict:
    """UNet kwargs with each example replaced by the null condition with probability drop_prob."""
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
