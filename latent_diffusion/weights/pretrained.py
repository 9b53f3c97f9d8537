"""A pretrained text-to-image LDM in our form, and diffusers-format folders <-> that form.

A diffusers Stable Diffusion folder holds model_index.json and one sub-folder per component:
unet/ and vae/ (config.json + diffusion_pytorch_model.safetensors), text_encoder/ (transformers
config.json + model.safetensors), tokenizer/ and scheduler/ (scheduler_config.json). Every
module configuration is derived from those files; nothing is fetched from a network.
"""

import dataclasses
import json
import pathlib
from typing import Any

import flax.linen as nn

from latent_diffusion.data import tokenization
from latent_diffusion.diffusion import NoiseSchedule
from latent_diffusion.weights import autoencoder as autoencoder_weights
from latent_diffusion.weights import files, mapping, scheduler as scheduler_weights, text as text_weights
from latent_diffusion.weights import unet as unet_weights

_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_PIPELINE_CLASS = "StableDiffusionPipeline"
_DIFFUSERS_VERSION = "0.42.1"


@dataclasses.dataclass
class PretrainedLDM:
  """Modules, float32 params and sampling defaults of a text-to-image latent diffusion model."""
  unet: nn.Module
  unet_params: Any
  vae: nn.Module
  vae_params: Any
  scaling_factor: float
  text_encoder: nn.Module
  text_params: Any
  tokenizer: Any
  schedule: NoiseSchedule
  sampler: str
  sampler_options: dict
  # The configs read from (or to be written to) the folder, kept for a lossless export.
  unet_config: dict
  vae_config: dict
  scheduler_config: dict

  @property
  def latent_channels(self) -> int:
    return self.unet_config["in_channels"]

  @property
  def vae_scale(self) -> int:
    return 2 ** (len(self.vae_config["block_out_channels"]) - 1)

  @property
  def default_size(self) -> int:
    """Image side in pixels the UNet was configured for (sample_size x VAE factor)."""
    return self.unet_config["sample_size"] * self.vae_scale


def _load_diffusers_model(folder: pathlib.Path, module_from_config, rules_fn, abstract_fn):
  config = files.read_json(folder / "config.json", f"{folder.name} config")
  module = module_from_config(config)
  state = files.read_checkpoint(files.weights_file(folder, _DIFFUSERS_WEIGHTS, f"{folder.name} weights"))
  params = mapping.import_params(state, rules_fn(module), abstract_fn(module, config), source=str(folder))
  return module, params, config


def load_diffusers_vae(folder: str | pathlib.Path) -> tuple[nn.Module, Any, dict]:
  """(module, params, config) of a diffusers AutoencoderKL / VQModel folder (e.g. a pipeline's vae/)."""
  return _load_diffusers_model(
      pathlib.Path(folder), autoencoder_weights.from_diffusers_config, autoencoder_weights.diffusers_rules,
      lambda m, c: autoencoder_weights.abstract_params(m, 8 * 2 ** (len(c["block_out_channels"]) - 1)))


def load_diffusers(folder: str | pathlib.Path) -> PretrainedLDM:
  """Reads a diffusers StableDiffusionPipeline-style folder (local only)."""
  folder = pathlib.Path(folder)
  index = files.read_json(folder / "model_index.json", "diffusers pipeline index (model_index.json)")
  needed = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
  absent = [name for name in needed if not index.get(name) or index[name][0] is None]
  if absent:
    raise ValueError(f"{folder / 'model_index.json'} lacks the components {absent}; a text-to-image pipeline "
                     f"needs {list(needed)}.")
  unet, unet_params, unet_config = _load_diffusers_model(
      folder / "unet", unet_weights.from_diffusers_config, unet_weights.diffusers_rules,
      lambda m, c: unet_weights.abstract_params(m, c["sample_size"], c["in_channels"]))
  vae, vae_params, vae_config = load_diffusers_vae(folder / "vae")
  text_encoder, text_params = text_weights.load_hf_text_encoder(folder / "text_encoder")
  tokenizer = tokenization.load_tokenizer(folder / "tokenizer")
  scheduler_config = files.read_json(folder / "scheduler" / "scheduler_config.json", "scheduler config")
  schedule, sampler, options = scheduler_weights.from_diffusers_scheduler(scheduler_config)
  return PretrainedLDM(unet=unet, unet_params=unet_params, vae=vae, vae_params=vae_params,
                       scaling_factor=autoencoder_weights.scaling_factor(vae_config), text_encoder=text_encoder,
                       text_params=text_params, tokenizer=tokenizer, schedule=schedule, sampler=sampler,
                       sampler_options=options, unet_config=unet_config, vae_config=vae_config,
                       scheduler_config=scheduler_config)


def _write_diffusers_model(folder: pathlib.Path, config: dict, tensors: dict) -> None:
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
  files.write_safetensors(tensors, folder / _DIFFUSERS_WEIGHTS[0], metadata={"format": "pt"})


def save_diffusers(model: PretrainedLDM, folder: str | pathlib.Path) -> None:
  """Writes `model` as a diffusers folder that diffusers' from_pretrained and load_diffusers read."""
  folder = pathlib.Path(folder)
  unet_config = unet_weights.to_diffusers_config(model.unet, "UNet2DConditionModel")
  unet_config["sample_size"] = model.unet_config["sample_size"]
  _write_diffusers_model(folder / "unet", unet_config,
                         mapping.export_params(model.unet_params, unet_weights.diffusers_rules(model.unet)))
  vae_config = autoencoder_weights.to_diffusers_config(model.vae, model.scaling_factor)
  vae_config["sample_size"] = model.vae_config.get("sample_size", model.default_size)
  _write_diffusers_model(folder / "vae", vae_config,
                         mapping.export_params(model.vae_params, autoencoder_weights.diffusers_rules(model.vae)))
  text_weights.save_hf_text_encoder(model.text_encoder, model.text_params, folder / "text_encoder")
  model.tokenizer.save_pretrained(folder / "tokenizer")
  (folder / "scheduler").mkdir(parents=True, exist_ok=True)
  (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(model.scheduler_config, indent=2))
  index = {"_class_name": _PIPELINE_CLASS, "_diffusers_version": _DIFFUSERS_VERSION,
           "requires_safety_checker": False, "feature_extractor": [None, None], "safety_checker": [None, None],
           "image_encoder": [None, None], "unet": ["diffusers", unet_config["_class_name"]],
           "vae": ["diffusers", vae_config["_class_name"]],
           "text_encoder": ["transformers", text_weights.to_hf_config(model.text_encoder)["architectures"][0]],
           "tokenizer": ["transformers", type(model.tokenizer).__name__.removesuffix("Fast")],
           "scheduler": ["diffusers", model.scheduler_config["_class_name"]]}
  (folder / "model_index.json").write_text(json.dumps(index, indent=2))
