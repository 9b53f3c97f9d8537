"""Pre-encoding job throughput vs the bare jitted encoder on the same batches (pipeline overhead).

  python benchmarks/encode_overhead.py [--images=256] [--size=64] [--batch=16] [--channels=32,64,64]
  python benchmarks/encode_overhead.py --vae-size=cpu-small --images=64 --batch=4   # a benchmark size's VAE

Builds tar shards of JPEG crops of real photos (scikit-image / scikit-learn) and a random
diffusers-layout KL autoencoder, then measures (a) the compiled encoder alone on one device-resident
batch, repeated, and (b) the full job (decode, resize/crop, encode, write ArrayRecord shards) over
the same number of images. Overhead = (b) / (a) - 1 in seconds per image. Writes
benchmarks/results/encode_overhead.json (or --out).
"""

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

sys.path.insert(0, str(REPO / "benchmarks"))

import configs  # noqa: E402
from latent_diffusion import configuration, encoding, host_cpu, host_memory, parallel  # noqa: E402
from latent_diffusion.data import tar_shards  # noqa: E402
from latent_diffusion.models import AutoencoderKL  # noqa: E402
from latent_diffusion.weights import autoencoder as ae_weights  # noqa: E402
from tests.data import photo_fixtures  # noqa: E402


def write_jpeg_shards(directory: pathlib.Path, images: int, size: int, per_shard: int = 64) -> str:
  """JPEG crops with sides in [max(160, size), 300] (the smallest photo is 300 px high)."""
  rng = np.random.default_rng(0)
  photos = [photo_fixtures._rgb(p) for p in photo_fixtures.photos().values()]  # pylint: disable=protected-access
  for shard in range(-(-images // per_shard)):
    members = []
    for i in range(min(per_shard, images - shard * per_shard)):
      crop = photo_fixtures.random_crop(photos[int(rng.integers(len(photos)))], rng, max(160, size), 300)
      data, _, _ = photo_fixtures._jpeg(crop)  # pylint: disable=protected-access
      members += [(f"{shard:05d}{i:04d}.jpg", data), (f"{shard:05d}{i:04d}.txt", b"a photo")]
    photo_fixtures.write_tar(directory / f"{shard:05d}.tar", members)
  return str(directory / f"{{00000..{shard:05d}}}.tar")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--images", type=int, default=256)
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--channels", default="32,64,64")
  parser.add_argument("--vae-size", default="", help="use this benchmarks/configs.py size's VAE and image size")
  parser.add_argument("--num-threads", type=int, default=0, help="decoding threads (default: config.encode's)")
  parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "encode_overhead.json"))
  args = parser.parse_args()
  if args.vae_size:
    vae_config = configs.SIZES[args.vae_size]["vae"]
    ae = ae_weights.from_diffusers_config(vae_config)
    widths, args.size = list(vae_config["block_out_channels"]), vae_config["sample_size"]
  else:
    widths = [int(c) for c in args.channels.split(",")]
    ae = AutoencoderKL(in_channels=3, ch=widths[0], ch_mult=tuple(w // widths[0] for w in widths), num_res_blocks=1,
                       z_channels=4, embed_dim=4, groups=8)
  x = np.zeros((args.batch, args.size, args.size, 3), np.float32)
  params = jax.jit(lambda r: ae.init({"params": r, "sample": r}, x[:1])["params"])(jax.random.key(0))
  config, _ = configuration.parse_config_args(["--config=configs/base.py"])
  config.encode.batch_size, config.encode.records_per_shard = args.batch, 64
  config.encode.num_threads = args.num_threads or config.encode.num_threads
  mesh = parallel.make_mesh(config.mesh)

  encode = encoding.make_encode_fn(ae, "moments", "float32", 0, mesh, config.mesh)
  images = jax.device_put(np.random.default_rng(0).uniform(-1, 1, x.shape).astype(np.float32))
  records = jax.device_put(np.arange(args.batch))
  jax.block_until_ready(encode(params, images, records))
  times = []
  for _ in range(max(3, args.images // args.batch)):
    start = time.perf_counter()
    jax.block_until_ready(encode(params, images, records))
    times.append(time.perf_counter() - start)
  bare = args.batch / statistics.median(times)

  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    (tmp / "shards").mkdir()
    pattern = write_jpeg_shards(tmp / "shards", args.images, args.size)
    source = tar_shards.TarShardSource(pattern)
    start = time.perf_counter()
    manifest = encoding.encode_to_shards(source, tmp / "out", ae, params, image_size=args.size,
                                         encode_config=config.encode, mesh=mesh, mesh_config=config.mesh,
                                         encoder_name="random")
    wall = time.perf_counter() - start
  job = manifest["last_run_throughput"]["images_per_second"]
  result = {"images": args.images, "size": args.size, "batch": args.batch, "channels": widths, "vae": args.vae_size,
            "decode_threads": config.encode.num_threads,
            "cpu": host_cpu.describe().as_dict(),
            "bare_encoder_images_per_s": round(bare, 1), "job_images_per_s": round(job, 1),
            "job_wall_s_incl_compile": round(wall, 2), "overhead_pct": round(100 * (bare / job - 1), 1)}
  print(json.dumps(result, indent=1))
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
  host_memory.relaunch_with_allocator()   # as the encode job does
  main()
