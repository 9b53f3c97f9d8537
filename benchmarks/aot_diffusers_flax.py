"""AOT compile of diffusers-Flax 0.39's UNet train step for a TPU topology, beside benchmarks/aot.py's of ours.

  JAX_PLATFORMS=cpu $(python benchmarks/venvs.py aot_diffusers | cut -d' ' -f2) \
      benchmarks/aot_diffusers_flax.py --size=sd15 --topology=v5p:2x2x1 --batch=32 [--out=results.jsonl]

venvs.aot_python('aot_diffusers') is the environment of benchmarks/aot.py (jax 0.10.2, libtpu 0.0.42.1) plus diffusers
0.39, so that both steps are compiled by the same compiler. (The peer venv diffusers_flax_tpu, their jax 0.6.2 with
libtpu 0.0.17, ran out of this machine's memory on SD-1.5: > 17 GiB RSS after 16 CPU minutes, 2026-11-30.)

The step is diffusers' train_text_to_image_flax.py, as benchmarks/systems/diffusers_flax.py runs it
(FlaxDDPMScheduler.add_noise, epsilon MSE, optax.adamw(1e-4), state donated) with the UNet in bfloat16 (their
--mixed_precision=bf16) and their parallelism: data parallel (their pmap), parameters and AdamW replicated on
every chip; here one jit over a data mesh of the topology's devices. No EMA, no gradient clipping, no
non-finite guard (theirs has none). Prints one JSON line of tpu_topology.compiled_figures.
"""

import argparse
import json
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import configs  # noqa: E402
from tpu_topology import compiled_figures, topology_devices  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from diffusers import FlaxDDPMScheduler, FlaxUNet2DConditionModel  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402


def compile_step(size: str, devices: list, batch: int):
  cfg = configs.SIZES[size]
  unet = FlaxUNet2DConditionModel.from_config({k: v for k, v in cfg["unet"].items() if not k.startswith("_")},
                                              dtype=jnp.bfloat16)
  ddpm = FlaxDDPMScheduler.from_config({k: v for k, v in configs.SCHEDULER.items() if not k.startswith("_")})
  ddpm_state = ddpm.create_state()
  tx = optax.adamw(1e-4)
  mesh = jax.sharding.Mesh(devices, ("data",))
  replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  params = jax.eval_shape(unet.init_weights, jax.random.PRNGKey(0))
  state = jax.eval_shape(lambda p: (p, tx.init(p)), params)

  def loss_fn(params, latents, context, key):
    t_key, n_key = jax.random.split(key)
    noise = jax.random.normal(n_key, latents.shape)
    t = jax.random.randint(t_key, latents.shape[:1], 0, ddpm.config.num_train_timesteps)
    noisy = ddpm.add_noise(ddpm_state, latents, noise, t)
    pred = unet.apply({"params": params}, noisy, t, context, train=True).sample
    return jnp.mean((pred - noise) ** 2)

  def step(state, latents, context, key):
    params, opt_state = state
    loss, grads = jax.value_and_grad(loss_fn)(params, latents, context, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  h, w, c = configs.latent_shape(size)
  abstract = lambda shape, dtype, sharding: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
  state = jax.tree.map(lambda x: abstract(x.shape, x.dtype, replicated), state)
  latents = abstract((batch, c, h, w), jnp.float32, split)                       # NCHW, as theirs
  context = abstract((batch, cfg["context_tokens"], cfg["unet"]["cross_attention_dim"]), jnp.float32, split)
  key = abstract((2,), jnp.uint32, replicated)
  jitted = jax.jit(step, donate_argnums=0, out_shardings=(jax.tree.map(lambda x: x.sharding, state), replicated))
  return jitted.lower(state, latents, context, key).compile()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="sd15", choices=sorted(configs.SIZES))
  parser.add_argument("--topology", required=True)
  parser.add_argument("--batch", type=int, required=True, help="global batch")
  parser.add_argument("--out", help="append the JSON line to this file")
  parser.add_argument("--hlo", help="write the compiled HLO text (compiled.as_text()) to this file")
  args = parser.parse_args()
  devices = topology_devices(args.topology)
  start = time.perf_counter()
  compiled = compile_step(args.size, devices, args.batch)
  line = json.dumps({"system": "diffusers_flax_0.39", "size": args.size, "topology": args.topology,
                     "global_batch": args.batch, "mesh": {"data": len(devices)}, "dtype": "bfloat16",
                     "compile_s": round(time.perf_counter() - start, 1),
                     **compiled_figures(compiled, args.topology, devices, args.batch)})
  print(line, flush=True)
  if args.hlo:
    pathlib.Path(args.hlo).write_text(compiled.as_text(), encoding="utf-8")
  if args.out:
    with open(args.out, "a", encoding="utf-8") as f:
      f.write(line + "\n")


if __name__ == "__main__":
  main()
