"""The latent pre-encoding job: images -> frozen encoder on the mesh -> ArrayRecord latent shards.

Exactly once by construction: record i of the source's global order belongs to output shard
i // records_per_shard. A shard is written by one process (shard s by process s % P) to
'<shard>.partial', then renamed, then described by a JSON sidecar (records, skipped keys by
reason); a rerun redoes only the shards without a sidecar. So a job killed at any point and run
again ends with the output of an uninterrupted run. On SIGTERM all processes stop after the same
encoder call (latent_diffusion.preemption), write what that call produced, commit the shards it
completed, abandon the others (their '.partial' files are removed) and exit with
PREEMPTED_EXIT_CODE; the rerun redoes the abandoned shards. All processes make the same number of
encoder calls on one global batch sharded over (data, fsdp); each shard starts a new batch, and slots
after a shard's or a process's last record are padding. Host work (decoding, writing) overlaps the
device: step k+1 is dispatched before the results of step k are written.
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import math
import pathlib
import time
from collections.abc import Callable

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from latent_diffusion import compiler, console, parallel, preemption
from latent_diffusion.data import images as image_transforms
from latent_diffusion.data import latent_shards
from latent_diffusion.models import AutoencoderKL

OUTPUTS = ("moments", "sample")
TEXT_OUTPUTS = ("none", "tokens", "context")
DTYPES = ("float32", "bfloat16", "float16")

# Photos are decoded as RGB whatever their file's mode (latent_diffusion.data.images.DecodeImage).
PHOTO_CHANNELS = 3


def check_encoder(ae, encoder_name: str, image_size: int) -> None:
  """ValueError unless `ae` takes the photos the job decodes (RGB) at image_size (a multiple of its factor f)."""
  if ae.in_channels != PHOTO_CHANNELS:
    raise ValueError(
        f"The encoder {encoder_name} takes {ae.in_channels}-channel images, but the photos of --input are decoded "
        f"as {PHOTO_CHANNELS}-channel RGB. Encode with an autoencoder trained on such photos (stage 1 with "
        f"--config.autoencoder.model.in_channels={PHOTO_CHANNELS}, see README 'Data at scale') or a --vae folder.")
  f = 2 ** (len(ae.ch_mult) - 1)
  if image_size % f:
    raise ValueError(f"--config.data.image_size={image_size} is not a multiple of the encoder's downsampling "
                     f"factor f={f} ({encoder_name}); choose a multiple of {f}.")


@dataclasses.dataclass(frozen=True)
class Shard:
  """Output shard `index` of `count`: source records [start, stop)."""
  index: int
  count: int
  start: int
  stop: int

  @property
  def name(self) -> str:
    return f"latents-{self.index:05d}-of-{self.count:05d}"

  def path(self, output: pathlib.Path) -> pathlib.Path:
    return output / f"{self.name}{latent_shards.SUFFIX}"

  def sidecar(self, output: pathlib.Path) -> pathlib.Path:
    return output / f"{self.name}.json"


def plan_shards(num_records: int, records_per_shard: int) -> list[Shard]:
  count = max(1, math.ceil(num_records / records_per_shard))
  return [Shard(i, count, i * records_per_shard, min((i + 1) * records_per_shard, num_records)) for i in range(count)]


def owned_slots(shards: list[Shard], output: pathlib.Path, process: int, num_processes: int,
                local_batch: int) -> np.ndarray:
  """Source record indices (-1: padding) this process still has to encode, in order: its unfinished
  shards, each padded to whole local batches. So every batch holds the records of one shard at the
  same slots in every run, fresh or resumed: XLA's CPU kernels can round an example differently
  with other neighbours in the batch, and a resumed run must write bitwise the same latents."""
  mine = [s for s in shards if s.index % num_processes == process and not s.sidecar(output).is_file()]
  blocks = [np.full(-(-(s.stop - s.start) // local_batch) * local_batch, -1, np.int64) for s in mine]
  for block, shard in zip(blocks, mine):
    block[:shard.stop - shard.start] = np.arange(shard.start, shard.stop)
  return np.concatenate(blocks + [np.zeros(0, np.int64)])


class _Slot(grain.transforms.Map):
  """Record index (-1 = padding) -> {'image' [S, S, 3], 'record', 'valid', 'key', 'caption' (None if the
  record has none), 'label', and with `tokenize` its token inputs ('tokens' [L], ...) of the caption or of
  ''}; bad images stay as invalid slots."""

  def __init__(self, source, image_size: int, skips: image_transforms.SkipCounter, min_size: int,
               tokenize: Callable[[list[str]], dict] | None = None):
    self.source, self.image_size, self.tokenize = source, image_size, tokenize
    self.decode = image_transforms.DecodeImage(skips, min_size=min_size, draft_size=image_size)
    self.crop = image_transforms.ResizeCrop(image_size, "center", flip=False)

  def _text(self, caption: str | None) -> dict:
    tokens = {k: v[0] for k, v in self.tokenize([caption or ""]).items()} if self.tokenize else {}
    return {"caption": caption, **tokens}

  def map(self, index: int) -> dict:
    blank = {"image": np.zeros((self.image_size, self.image_size, 3), np.float32), "record": np.int64(index),
             "valid": False, "key": "", "label": np.int64(-1), **self._text("")}
    if index < 0:
      return blank
    record = self.source[int(index)]
    meta = {"key": record["key"], "label": np.int64(record.get("label", -1)), **self._text(record.get("caption"))}
    decoded = self.decode.map(record)
    if decoded is None:
      return {**blank, **meta}
    # ResizeCrop draws no random numbers with a center crop and no flip.
    image = self.crop.random_map(decoded, np.random.default_rng(0))["image"]
    return {**blank, **meta, "image": image, "valid": True}


def make_encode_fn(ae: AutoencoderKL, output: str, dtype: str, seed: int, mesh, mesh_config):
  """jit(params, images [B, S, S, 3], records [B]) -> dict of latents [B, h, w, c] in `dtype`.

  'sample' draws z ~ q(z|x) with the key fold_in(seed, record): the same record always gets the
  same sample, whichever process, batch or rerun encodes it.
  """
  root = jax.random.key(seed)

  def encode(params, images, records):
    posterior = ae.apply({"params": params}, images, method="latent_distribution")
    if output == "sample":
      keys = jax.vmap(lambda r: jax.random.fold_in(root, r))(records)
      noise = jax.vmap(lambda k: jax.random.normal(k, posterior.mean.shape[1:], posterior.mean.dtype))(keys)
      return {"latent": (posterior.mean + posterior.std * noise).astype(dtype)}
    return {"latent_mean": posterior.mean.astype(dtype), "latent_logvar": posterior.logvar.astype(dtype)}

  batch = parallel.batch_sharding(mesh, mesh_config)
  return jax.jit(encode, in_shardings=(None, batch, batch), out_shardings=batch, compiler_options=compiler.jit_options())


def params_digest(params) -> str:
  """sha256 over the encoder's parameter bytes (names and float32 values), identical on every process."""
  gathered = multihost_utils.process_allgather(params, tiled=True)
  digest = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(gathered)[0], key=lambda x: jax.tree_util.keystr(x[0])):
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(np.asarray(leaf, np.float32).tobytes())
  return digest.hexdigest()


class _ShardWriters:
  """Open writers of this process's shards; a shard is committed once its last slot is seen."""

  def __init__(self, shards: list[Shard], records_per_shard: int, output: pathlib.Path,
               skips: image_transforms.SkipCounter):
    self.shards, self.records_per_shard = shards, records_per_shard
    self.output, self.skips = output, skips
    self.open: dict[int, tuple[latent_shards.ShardWriter, list]] = {}

  def add(self, record: int, example: dict | None, key: str) -> None:
    shard = self.shards[record // self.records_per_shard]
    if shard.index not in self.open:
      self.open[shard.index] = (latent_shards.ShardWriter(shard.path(self.output)), [])
    writer, skipped = self.open[shard.index]
    if example is None:
      skipped.append(key)
    else:
      writer.write(example)
    if record == shard.stop - 1:
      self._commit(shard)

  def abandon(self) -> list[str]:
    """Closes and deletes this process's unfinished shards (a rerun redoes them); returns their names."""
    names = []
    for index in sorted(self.open):
      writer, _ = self.open.pop(index)
      writer.abandon()
      names.append(self.shards[index].name)
    return names

  def _commit(self, shard: Shard) -> None:
    writer, skipped = self.open.pop(shard.index)
    writer.commit()
    reasons = {}
    for key in skipped:
      reason = next((r for r in self.skips.counts() if key in self.skips.keys(r)), "unknown")
      reasons.setdefault(reason, []).append(key)
    sidecar = {"shard": shard.path(self.output).name, "source_records": [shard.start, shard.stop],
               "records": writer.count, "skipped": reasons}
    partial = shard.sidecar(self.output).with_suffix(".json.partial")
    partial.write_text(json.dumps(sidecar, indent=1))
    partial.replace(shard.sidecar(self.output))


def _slot_iterator(source, slots: np.ndarray, local_batch: int, steps: int, image_size: int, min_size: int,
                   skips, num_threads: int, tokenize):
  padded = np.full(steps * local_batch, -1, np.int64)
  padded[:len(slots)] = slots
  dataset = grain.MapDataset.source(padded).map(_Slot(source, image_size, skips, min_size, tokenize))
  dataset = dataset.batch(local_batch)
  return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4)))


class EmptyOutputError(ValueError):
  """The job finished but wrote no record (every source record was skipped)."""


def latent_shape(ae: AutoencoderKL, ae_params, image_size: int) -> tuple[int, int, int]:
  """(h, w, c) of the latents `ae` makes of image_size x image_size RGB images (shapes only, nothing runs)."""
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  posterior = jax.eval_shape(lambda p, x: ae.apply({"params": p}, x, method="latent_distribution"), ae_params, images)
  return tuple(int(d) for d in posterior.mean.shape[1:])


def encode_to_shards(source, output: pathlib.Path, ae: AutoencoderKL, ae_params, *, image_size: int,
                     encode_config, mesh, mesh_config, encoder_name: str, skipped_at_index: dict | None = None,
                     text=None, description: dict | None = None) -> dict:
  """Runs (or resumes) the job over `source` (len + getitem records); returns the manifest.

  text: the training run's TextConditioner; encode_config.text = 'tokens' stores its token inputs of each
  caption, 'context' also its frozen encoder's outputs (so stage 2 runs no text encoder).
  description: more JSON-able facts for manifest.json (the input pattern, the run's config, ...).
  Raises EmptyOutputError after writing the manifest if no record was encoded.
  """
  if encode_config.text not in TEXT_OUTPUTS:
    raise ValueError(f"config.encode.text={encode_config.text!r}; expected one of {TEXT_OUTPUTS}.")
  if encode_config.text != "none" and text is None:
    raise ValueError(f"config.encode.text={encode_config.text!r} needs text conditioning (config.ldm.conditioning.text).")
  if encode_config.output not in OUTPUTS or encode_config.dtype not in DTYPES:
    raise ValueError(f"config.encode.output={encode_config.output!r} / dtype={encode_config.dtype!r}; "
                     f"expected one of {OUTPUTS} / {DTYPES}.")
  if not len(source):
    raise EmptyOutputError(f"The input holds no sample with an image (skipped while indexing: "
                           f"{ {r: len(k) for r, k in (skipped_at_index or {}).items()} }): check --input.")
  output.mkdir(parents=True, exist_ok=True)
  process, num_processes = jax.process_index(), jax.process_count()
  shards = plan_shards(len(source), encode_config.records_per_shard)
  global_batch = encode_config.batch_size
  if global_batch % num_processes:
    raise ValueError(f"config.encode.batch_size={global_batch} is not divisible by {num_processes} processes.")
  local_batch = global_batch // num_processes
  # Every process must see the same set of finished shards before deciding its step count.
  multihost_utils.sync_global_devices("encode: listed finished shards")
  all_slots = [owned_slots(shards, output, p, num_processes, local_batch) for p in range(num_processes)]
  steps = max(math.ceil(len(s) / local_batch) for s in all_slots)
  skips = image_transforms.SkipCounter("encode")
  tokenize = text.tokenize if encode_config.text != "none" else None
  batches = _slot_iterator(source, all_slots[process], local_batch, steps, image_size,
                           encode_config.min_size, skips, encode_config.num_threads, tokenize)
  encode = make_encode_fn(ae, encode_config.output, encode_config.dtype, encode_config.seed, mesh, mesh_config)
  sharding = parallel.batch_sharding(mesh, mesh_config)
  writers = _ShardWriters(shards, encode_config.records_per_shard, output, skips)
  console.say(f"encode: {len(source)} records in {len(shards)} shards; this run: {steps} steps of {global_batch} "
              f"images ({int((all_slots[process] >= 0).sum())} remaining on process 0)")

  def write(local: dict, latents: dict) -> None:
    latents = {k: np.asarray(v) for k, v in multihost_utils.global_array_to_host_local_array(
        latents, mesh, sharding.spec).items()}
    token_fields = [name for name in ("tokens", "token_mask") if name in local]
    contexts = None
    if encode_config.text == "context":
      contexts = text.encode_texts([c or "" for c in local["caption"]], batch_size=len(local["caption"]))
    for i, record in enumerate(local["record"]):
      if record < 0:
        continue
      example = None
      if local["valid"][i]:
        caption = local["caption"][i]
        example = {"key": str(local["key"][i]), "caption": None if caption is None else str(caption),
                   "label": int(local["label"][i]), **{name: local[name][i].astype(np.int32) for name in token_fields},
                   **({"context": contexts[i].astype(encode_config.dtype)} if contexts is not None else {}),
                   **{name: value[i] for name, value in latents.items()}}
      writers.add(int(record), example, str(local["key"][i]))

  # Writes (device-to-host copy, serialisation, ArrayRecord) run in order on one thread while the next batch
  # encodes, so that the main thread dispatches without waiting for them; at most one is in flight. (On a 2-core
  # CPU host, 64 px images: overhead over the bare encoder 21-22 % vs 26 % with writes on the main thread;
  # lowering the host threads' OS priority changed nothing measurable.)
  # Throughput counts from the end of step 0, whose dispatch includes compiling the encoder.
  start, writing, done = time.perf_counter(), None, 0
  preemption.install()
  with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="encode-write") as writer:
    for step in range(steps):
      local = next(batches)
      arrays = parallel.global_batch({"image": local["image"], "record": local["record"]}, sharding)
      latents = encode(ae_params, arrays["image"], arrays["record"])
      if writing is not None:
        writing.result()                             # raises what the write raised
      writing = writer.submit(write, local, latents)
      if step == 0:
        start = time.perf_counter()
      else:
        done += global_batch
      if done and ((step + 1) % encode_config.log_every_steps == 0 or step + 1 == steps):
        rate = done / (time.perf_counter() - start)
        console.say(console.progress_line("encode", step + 1, steps, rate / global_batch, {"images/s": rate}))
      if preemption.reached() and step + 1 < steps:   # every process, every call: they stop at the same one
        writing.result()
        abandoned = writers.abandon()
        logging.warning("encode: abandoned unfinished shard(s) %s of this process; a rerun redoes them.", abandoned)
        multihost_utils.sync_global_devices("encode: preempted")
        raise preemption.Preempted("encode", step + 1)
    if writing is not None:
      writing.result()
  seconds = time.perf_counter() - start
  multihost_utils.sync_global_devices("encode: all shards written")
  manifest = _manifest(shards, output, encode_config, encoder_name, params_digest(ae_params),
                       skipped_at_index or {}, {"seconds_after_compile": seconds, "slots": done,
                                                "images_per_second": done / max(seconds, 1e-9)})
  manifest.update(image_size=image_size, latent_shape=latent_shape(ae, ae_params, image_size), **(description or {}))
  if process == 0:
    partial = output / "manifest.json.partial"
    partial.write_text(json.dumps(manifest, indent=1))
    partial.replace(output / "manifest.json")
  if not manifest["records"]:
    raise EmptyOutputError(
        f"No record was encoded: all {manifest['source_samples']} samples of the input were skipped "
        f"({manifest['skipped_counts']}; keys by reason in {output / 'manifest.json'}). Check --input and the "
        f"filters (config.encode.min_size={encode_config.min_size}); stage 2 cannot train on an empty folder.")
  return manifest


def _manifest(shards, output, encode_config, encoder_name, digest, skipped_at_index, throughput) -> dict:
  sidecars = [json.loads(s.sidecar(output).read_text()) for s in shards]
  skipped: dict[str, list] = {reason: sorted(keys) for reason, keys in skipped_at_index.items()}
  for sidecar in sidecars:
    for reason, keys in sidecar["skipped"].items():
      skipped.setdefault(reason, []).extend(keys)
  # source_records: the records the source indexed; source_samples adds those skipped while indexing (no image,
  # cut by a truncated tar): every sample the input was seen to hold.
  return {"records": sum(s["records"] for s in sidecars), "source_records": shards[-1].stop,
          "source_samples": shards[-1].stop + sum(len(keys) for keys in skipped_at_index.values()),
          "skipped_counts": {r: len(k) for r, k in sorted(skipped.items())}, "skipped": skipped,
          "shards": [s["shard"] for s in sidecars], "encoder": encoder_name, "encoder_sha256": digest,
          "config": json.loads(encode_config.to_json_best_effort()), "last_run_throughput": throughput}
