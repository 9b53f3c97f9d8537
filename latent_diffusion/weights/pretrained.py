"""diffusers pipeline folders <-> `bundle.LatentDiffusion`.

A diffusers Stable Diffusion folder holds model_index.json and one sub-folder per component:
unet/ and vae/ (config.json + diffusion_pytorch_model.safetensors), text_encoder/ (transformers
config.json + model.safetensors), tokenizer/ and scheduler/ (scheduler_config.json). Every
module configuration is derived from those files; nothing is fetched from a network. An export
writes every config key the import read (the files' own configs, updated from the modules).

Two pipelines share that layout: StableDiffusionPipeline (text -> image; the UNet reads the VAE's c latent
channels) and StableDiffusionInpaintPipeline (its UNet reads 2c + 1: x_t, the mask at the latent grid and the
masked image's latent; conditioning text + 'inpaint'). The UNet's input channels tell them apart.
"""

import json
import pathlib
from typing import Any

import flax.linen as nn

from latent_diffusion.bundle import LatentDiffusion
from latent_diffusion.conditioning import Conditioning, InpaintConditioner, TextConditioner
from latent_diffusion.weights import autoencoder as autoencoder_weights
from latent_diffusion.weights import files, mapping, scheduler as scheduler_weights, text as text_weights, tokenization
from latent_diffusion.weights import unet as unet_weights

_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
# Conditioning kinds -> the diffusers pipeline class of that layout.
_PIPELINE_CLASSES = {frozenset({"text"}): "StableDiffusionPipeline",
                     frozenset({"text", "inpaint"}): "StableDiffusionInpaintPipeline"}
_DIFFUSERS_VERSION = "0.42.1"
_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def load_diffusers_model(folder: pathlib.Path, module_from_config, rules_fn, abstract_fn):
  """(module, params, config.json dict) of one diffusers model folder (config.json + diffusion_pytorch_model.*)."""
  config = files.read_json(folder / "config.json", f"{folder.name} config")
  module = module_from_config(config)
  state = files.read_checkpoint(files.weights_file(folder, _DIFFUSERS_WEIGHTS, f"{folder.name} weights"))
  params = mapping.import_params(state, rules_fn(module), abstract_fn(module, config), source=str(folder))
  return module, params, config


def load_diffusers_vae(folder: str | pathlib.Path) -> tuple[nn.Module, Any, dict]:
  """(module, params, config) of a diffusers AutoencoderKL / VQModel folder (e.g. a pipeline's vae/)."""
  return load_diffusers_model(
      pathlib.Path(folder), autoencoder_weights.from_diffusers_config, autoencoder_weights.diffusers_rules,
      lambda m, c: autoencoder_weights.abstract_params(m, 8 * 2 ** (len(c["block_out_channels"]) - 1)))


def load_text_conditioner(encoder_folder: str | pathlib.Path, tokenizer_folder: str | pathlib.Path,
                          **options) -> tuple[TextConditioner, dict]:
  """(frozen text conditioner, the encoder's config.json) of a transformers encoder folder and a tokenizer folder.

  use_attention_mask follows the encoder config's key of that name (as diffusers' pipelines do) unless given.
  """
  config = files.read_json(pathlib.Path(encoder_folder) / "config.json", "text encoder config.json")
  encoder, params = text_weights.load_hf_text_encoder(encoder_folder, dtype=options.pop("dtype", "float32"))
  options.setdefault("use_attention_mask", bool(config.get("use_attention_mask", False)))
  options.setdefault("train_encoder", False)
  tokenizer = tokenization.load_tokenizer(tokenizer_folder)
  return TextConditioner(tokenizer, encoder, params, **options), config


def _inpainting_unet(unet, latent_channels: int, folder: pathlib.Path) -> bool:
  """True for SD-inpainting's UNet (2c + 1 input channels), False for text-to-image (c); else ValueError."""
  if unet.in_channels in (latent_channels, 2 * latent_channels + 1):
    return unet.in_channels != latent_channels
  raise ValueError(f"{folder / 'unet' / 'config.json'}: in_channels={unet.in_channels} fits neither a text-to-image "
                   f"UNet ({latent_channels}, the VAE's latent channels) nor an inpainting one "
                   f"({2 * latent_channels + 1}: latents + mask + masked-image latents).")


def load_diffusers(folder: str | pathlib.Path) -> LatentDiffusion:
  """Reads a diffusers StableDiffusionPipeline or StableDiffusionInpaintPipeline folder (local only); the text
  encoder is frozen. An inpainting model samples from {'prompt', 'image' [B, H, W, 3] in [-1, 1], 'mask'
  [B, H, W] (1 = to fill)} and, as diffusers' 9-channel pipeline, does not paste the known region back
  (InpaintConditioner.keep_known=False)."""
  folder = pathlib.Path(folder)
  index = files.read_json(folder / "model_index.json", "diffusers pipeline index (model_index.json)")
  absent = [name for name in _COMPONENTS if not index.get(name) or index[name][0] is None]
  if absent:
    raise ValueError(f"{folder / 'model_index.json'} lacks the components {absent}; a text-to-image pipeline "
                     f"needs {list(_COMPONENTS)}.")
  unet, unet_params, unet_config = load_diffusers_model(
      folder / "unet", unet_weights.from_diffusers_config, unet_weights.diffusers_rules,
      lambda m, c: unet_weights.abstract_params(m, c["sample_size"], c["in_channels"]))
  vae, vae_params, vae_config = load_diffusers_vae(folder / "vae")
  text, text_config = load_text_conditioner(folder / "text_encoder", folder / "tokenizer")
  if text.width != unet.context_dim:
    raise ValueError(f"{folder}: the text encoder's width {text.width} does not match the UNet's "
                     f"cross_attention_dim {unet.context_dim}.")
  scale_factor = autoencoder_weights.scaling_factor(vae_config)
  conditioners = [text] + ([InpaintConditioner(keep_known=False)] if _inpainting_unet(unet, vae.embed_dim, folder)
                           else [])
  conditioning = Conditioning(conditioners).with_first_stage(vae, vae_params, scale_factor)
  conditioner_params = {"text": {"encoder": text.encoder_params}}
  if "inpaint" in conditioning:
    conditioner_params["inpaint"] = nn.unbox(conditioning["inpaint"].frozen_params())
  scheduler_config = files.read_json(folder / "scheduler" / "scheduler_config.json", "scheduler config")
  schedule, sampler, options = scheduler_weights.from_diffusers_scheduler(scheduler_config)
  size = unet_config["sample_size"]
  return LatentDiffusion(
      unet=unet, autoencoder=vae, conditioning=conditioning, schedule=schedule,
      schedule_config=scheduler_weights.schedule_config_from_diffusers(scheduler_config), scale_factor=scale_factor,
      latent_shape=(size, size, vae.embed_dim), sampler=sampler, sampler_options=options,
      params={"unet": unet_params, "autoencoder": vae_params, "conditioner": conditioner_params},
      source_configs={"unet": unet_config, "vae": vae_config, "scheduler": scheduler_config,
                      "text_encoder": text_config})


def _write_diffusers_model(folder: pathlib.Path, config: dict, tensors: dict) -> None:
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
  files.write_safetensors(tensors, folder / _DIFFUSERS_WEIGHTS[0], metadata={"format": "pt"})


def _exported_text_encoder(text: TextConditioner, params: dict) -> tuple[nn.Module, dict]:
  """The encoder as diffusers will run it: with layer='penultimate', the last layer dropped (exactly the
  same outputs: CLIP applies its final LayerNorm after the kept layers, BERT has none)."""
  encoder, params = text.encoder, dict(params)
  skip = {"last": 0, "penultimate": 1}[text.layer]
  if skip:
    kept = encoder.num_layers - skip
    params = {k: v for k, v in params.items() if not (k.startswith("layers_") and int(k.split("_")[1]) >= kept)}
    params.pop("pooler", None)
    encoder = encoder.clone(num_layers=kept, **({"add_pooling_layer": False} if hasattr(encoder, "add_pooling_layer")
                                                else {}))
  return encoder, params


def save_diffusers(model: LatentDiffusion, folder: str | pathlib.Path) -> None:
  """Writes `model` as a diffusers StableDiffusionPipeline folder (text-conditional models) or
  StableDiffusionInpaintPipeline folder (text + inpaint) that diffusers' from_pretrained and load_diffusers read;
  diffusers then samples what our Generator samples."""
  pipeline_class = _PIPELINE_CLASSES.get(frozenset(model.conditioning.kinds))
  if pipeline_class is None:
    raise ValueError(f"A diffusers Stable Diffusion pipeline is conditioned on text (StableDiffusionPipeline) or on "
                     f"text + inpaint (StableDiffusionInpaintPipeline); this model is conditioned on "
                     f"{model.conditioning.describe()}.")
  folder = pathlib.Path(folder)
  source = model.source_configs
  text = model.conditioning["text"]
  latent_channels = model.latent_shape[2]
  in_channels = 2 * latent_channels + 1 if "inpaint" in model.conditioning else latent_channels
  unet = model.unet if model.unet.in_channels is not None else model.unet.clone(in_channels=in_channels)
  unet_config = {**source.get("unet", {"sample_size": model.latent_shape[0]}),
                 **unet_weights.to_diffusers_config(unet, "UNet2DConditionModel")}
  unet_config["sample_size"] = source.get("unet", {}).get("sample_size", model.latent_shape[0])
  _write_diffusers_model(folder / "unet", unet_config,
                         mapping.export_params(model.params["unet"], unet_weights.diffusers_rules(unet)))
  vae_config = {**source.get("vae", {}), **autoencoder_weights.to_diffusers_config(model.autoencoder, model.scale_factor)}
  vae_config.setdefault("sample_size", model.default_size[0])
  _write_diffusers_model(folder / "vae", vae_config, mapping.export_params(
      model.params["autoencoder"], autoencoder_weights.diffusers_rules(model.autoencoder)))
  encoder, encoder_params = _exported_text_encoder(text, model.params["conditioner"]["text"]["encoder"])
  base = source.get("text_encoder") or {"model_type": text_weights.to_hf_config(encoder)["model_type"]}
  text_weights.save_hf_text_encoder(encoder, encoder_params, folder / "text_encoder",
                                    base_config={**base, "use_attention_mask": text.use_attention_mask})
  text.tokenizer.save_pretrained(folder / "tokenizer")
  tokenizer_config_path = folder / "tokenizer" / "tokenizer_config.json"
  tokenizer_config = json.loads(tokenizer_config_path.read_text())
  tokenizer_config["model_max_length"] = text.max_length      # diffusers pads prompts to model_max_length
  tokenizer_config_path.write_text(json.dumps(tokenizer_config, indent=2))
  scheduler_config = source.get("scheduler") or scheduler_weights.to_diffusers_scheduler(
      model.schedule_config, model.sampler, model.sampler_options)
  (folder / "scheduler").mkdir(parents=True, exist_ok=True)
  (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config, indent=2))
  index = {"_class_name": pipeline_class, "_diffusers_version": _DIFFUSERS_VERSION,
           "requires_safety_checker": False, "feature_extractor": [None, None], "safety_checker": [None, None],
           "image_encoder": [None, None], "unet": ["diffusers", unet_config["_class_name"]],
           "vae": ["diffusers", vae_config["_class_name"]],
           "text_encoder": ["transformers", text_weights.to_hf_config(encoder)["architectures"][0]],
           "tokenizer": ["transformers", type(text.tokenizer).__name__.removesuffix("Fast")],
           "scheduler": ["diffusers", scheduler_config["_class_name"]]}
  (folder / "model_index.json").write_text(json.dumps(index, indent=2))
