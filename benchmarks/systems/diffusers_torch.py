"""diffusers (PyTorch, CPU) on the shared configs: UNet2DConditionModel, AutoencoderKL, DDIMScheduler.

  python benchmarks/systems/diffusers_torch.py --workload=train|sample|vae|profile [--size=cpu-small] [--variant=...]

Run by benchmarks/run.py in the peer's own venv (benchmarks/peers/diffusers_torch.txt). Threads =
all cores; sampling under torch.inference_mode as StableDiffusionPipeline's loop (CFG on a doubled
batch, DDIMScheduler.step, then vae.decode). --variant: 'channels_last' (memory format of model and
inputs) and/or 'compile' (torch.compile of the UNet / VAE), comma-separated.
"""

import os
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import configs  # noqa: E402
import timing  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel  # noqa: E402


class Setup:
  def __init__(self, size: str, variant: str):
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # the CPUs this process may use (taskset, cpusets)
    torch.manual_seed(0)
    cfg = configs.SIZES[size]
    self.cfg = cfg
    self.variants = set(filter(None, variant.split(",")))
    self.format = torch.channels_last if "channels_last" in self.variants else torch.contiguous_format
    self.unet = UNet2DConditionModel.from_config(cfg["unet"]).to(memory_format=self.format)
    self.vae = AutoencoderKL.from_config(cfg["vae"]).to(memory_format=self.format)
    self.scale = cfg["vae"]["scaling_factor"]
    self.ddim = DDIMScheduler.from_config(configs.SCHEDULER)
    self.ddpm = DDPMScheduler.from_config(configs.SCHEDULER)
    h, w, c = configs.latent_shape(size)
    ctx = (cfg["context_tokens"], cfg["unet"]["cross_attention_dim"])
    rng = np.random.default_rng(0)
    nchw = lambda a: torch.from_numpy(np.moveaxis(a, -1, 1).astype(np.float32)).contiguous(memory_format=self.format)
    self.latents = nchw(rng.normal(size=(cfg["train_batch"], h, w, c)))
    self.context = torch.from_numpy(rng.normal(size=(cfg["train_batch"], *ctx)).astype(np.float32))
    self.x_T = nchw(rng.normal(size=(cfg["sample_batch"], h, w, c)))
    self.cond = torch.from_numpy(rng.normal(size=(cfg["sample_batch"], *ctx)).astype(np.float32))
    self.uncond = torch.from_numpy(rng.normal(size=(cfg["sample_batch"], *ctx)).astype(np.float32))
    image = cfg["vae"]["sample_size"]
    self.images = nchw(rng.uniform(-1, 1, (cfg["vae_batch"], image, image, 3)))
    self.vae_latents = nchw(rng.normal(size=(cfg["vae_batch"], h, w, c)))
    self.unet_fn = torch.compile(self.unet) if "compile" in self.variants else self.unet
    self.decode = torch.compile(self.vae.decode) if "compile" in self.variants else self.vae.decode
    self.encode = torch.compile(self.vae.encode) if "compile" in self.variants else self.vae.encode

  def train_step(self):
    self.unet.train()
    opt = torch.optim.AdamW(self.unet.parameters(), lr=1e-4, fused=True)
    steps = self.ddpm.config.num_train_timesteps

    def step():
      noise = torch.randn_like(self.latents)
      t = torch.randint(0, steps, (self.latents.shape[0],))
      noisy = self.ddpm.add_noise(self.latents, noise, t)
      pred = self.unet_fn(noisy, t, self.context).sample
      loss = torch.nn.functional.mse_loss(pred, noise)
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
      return loss.item()
    return step

  @torch.inference_mode()
  def sample(self):
    self.unet.eval()
    self.ddim.set_timesteps(configs.SAMPLE_STEPS)
    latents = self.x_T * self.ddim.init_noise_sigma
    context = torch.cat([self.uncond, self.cond])
    for t in self.ddim.timesteps:
      x = self.ddim.scale_model_input(torch.cat([latents] * 2), t)
      uncond_out, cond_out = self.unet_fn(x, t, encoder_hidden_states=context).sample.chunk(2)
      latents = self.ddim.step(uncond_out + configs.GUIDANCE * (cond_out - uncond_out), t, latents).prev_sample
    return self.decode(latents / self.scale).sample


def run_train(s: Setup, args) -> dict:
  result = timing.measure(s.train_step(), warmup=args.warmup, repeats=args.repeats)
  result["images_per_s"] = round(s.cfg["train_batch"] / result["median_s"], 3)
  return result


def run_sample(s: Setup, args) -> dict:
  result = timing.measure(s.sample, warmup=args.warmup, repeats=args.repeats)
  result["s_per_image"] = round(result["median_s"] / s.cfg["sample_batch"], 4)
  return result


@torch.inference_mode()
def run_vae(s: Setup, args) -> dict:
  s.vae.eval()
  out = {}
  encode, decode = lambda: s.encode(s.images).latent_dist.mean, lambda: s.decode(s.vae_latents)
  for name, fn in (("encode", encode), ("decode", decode)):
    r = timing.measure(fn, warmup=args.warmup, repeats=args.repeats)
    out[name] = {**r, "images_per_s": round(s.cfg["vae_batch"] / r["median_s"], 3)}
  return out


# torch op names -> what they compute (self time: an op's children are counted under their own names).
TORCH_CATEGORIES = [("attention (flash, SDPA)", r"scaled_dot_product"), ("convolutions (oneDNN, slow_conv2d)", r"conv"),
                    ("matmuls", r"^aten::(mm|addmm|bmm|matmul)$"),
                    ("copies, transposes, concatenations", r"^aten::(copy_|cat|transpose|contiguous|clone)$")]


def run_profile(s: Setup, args) -> dict:
  """Self CPU time of `args.repeats` train steps by torch op (torch.profiler), after `args.warmup` steps."""
  step = s.train_step()
  for _ in range(1 + args.warmup):
    step()
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
    for _ in range(args.repeats):
      step()
  seconds = {op.key: op.self_cpu_time_total * 1e-6 for op in profile.key_averages()}
  return timing.op_profile(seconds, TORCH_CATEGORIES, steps=args.repeats)


def main():
  args = timing.parse_args(__doc__.splitlines()[0])
  start = time.perf_counter()
  s = Setup(args.size, args.variant)
  run = {"train": run_train, "sample": run_sample, "vae": run_vae, "profile": run_profile}[args.workload]
  import diffusers  # pylint: disable=import-outside-toplevel
  timing.emit({"system": "diffusers_torch", "variant": args.variant, "diffusers": diffusers.__version__,
               "torch": torch.__version__, "threads": torch.get_num_threads(), **run(s, args),
               "setup_s": round(time.perf_counter() - start, 2)})


if __name__ == "__main__":
  main()
