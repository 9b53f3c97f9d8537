"""Conditioning by name: class labels, text and layouts (cross-attention), image-shaped conditions concatenated to
x_t (generic concat, inpainting, low-resolution images, segmentation maps), and combinations.

`from_config(config)` builds the `Conditioning` of config.ldm.conditioning; every place that feeds a
condition to the UNet (training inputs with classifier-free-guidance dropout, initialisation shapes,
sampling inputs, the null condition) goes through it.
"""

import pathlib

from latent_diffusion.conditioning.base import Conditioner
from latent_diffusion.conditioning.class_label import ClassConditioner
from latent_diffusion.conditioning.combined import Conditioning, merge_params
from latent_diffusion.conditioning.concat import ConcatConditioner
from latent_diffusion.conditioning.inpaint import InpaintConditioner, mask_options
from latent_diffusion.conditioning.layout import LayoutConditioner, LayoutTokenizer
from latent_diffusion.conditioning.low_res import LowResConditioner
from latent_diffusion.conditioning.segmentation import SegmentationConditioner
from latent_diffusion.conditioning.text import TextConditioner
from latent_diffusion.models.text import BertEncoder
from latent_diffusion.weights import text as text_weights
from latent_diffusion.weights import tokenization

TEXT_ENCODERS = ("pretrained", "trained")


def _pipeline_part(config, part: str) -> pathlib.Path | None:
  """<ldm.init_from>/<part> when fine-tuning a diffusers folder, else None."""
  init_from = config.ldm.init_from
  if init_from and pathlib.Path(init_from).is_dir():
    return pathlib.Path(init_from) / part
  return None


def trained_encoder(vocab_size: int, max_length: int, sizes, dtype) -> BertEncoder:
  """The paper's BERT-style transformer trained from scratch with the UNet; sizes: width, layers, heads, mlp_ratio."""
  return BertEncoder(vocab_size=vocab_size, hidden_size=sizes.width, intermediate_size=sizes.mlp_ratio * sizes.width,
                     num_layers=sizes.layers, num_heads=sizes.heads, max_position_embeddings=max_length,
                     add_pooling_layer=False, dtype=dtype)


def text_conditioner(config, source: str | None = None, pipeline_text: tuple | None = None) -> TextConditioner:
  """The text conditioner of config.ldm.conditioning.text.

  source overrides text.source (sampling reads prompts: 'caption'); pipeline_text = (tokenizer, encoder module,
  params) of an imported pipeline, used when no encoder_path is configured (fine-tuning).
  """
  text = config.ldm.conditioning.text
  if text.encoder not in TEXT_ENCODERS:
    raise ValueError(f"Unknown text encoder kind {text.encoder!r} (config.ldm.conditioning.text.encoder); "
                     f"known: {TEXT_ENCODERS}.")
  dtype = config.ldm.model.dtype
  if text.encoder == "pretrained" and pipeline_text is not None and not text.encoder_path:
    tokenizer, encoder, params = pipeline_text
    encoder = encoder.clone(dtype=dtype)
  elif text.encoder == "pretrained":
    encoder_path = text.encoder_path or _pipeline_part(config, "text_encoder")
    if encoder_path is None:
      raise ValueError("Text conditioning with a pretrained encoder needs config.ldm.conditioning.text.encoder_path "
                       "(a local transformers folder: config.json + model.safetensors), or ldm.init_from (a diffusers "
                       "pipeline folder with text_encoder/).")
    encoder, params = text_weights.load_hf_text_encoder(encoder_path, dtype=dtype)
    tokenizer = tokenization.load_tokenizer(text.tokenizer_path or _pipeline_part(config, "tokenizer") or encoder_path)
  else:
    if not text.tokenizer_path:
      raise ValueError("A text encoder trained from scratch needs a tokenizer: set "
                       "config.ldm.conditioning.text.tokenizer_path to a local tokenizer folder (e.g. a BERT one).")
    tokenizer, params = tokenization.load_tokenizer(text.tokenizer_path), None
  train_encoder = text.train_encoder or text.encoder == "trained"
  if text.encoder == "trained":
    encoder = trained_encoder(len(tokenizer), text.max_length or tokenizer.model_max_length, text, dtype)
  return TextConditioner(tokenizer, encoder, params, train_encoder=train_encoder, max_length=text.max_length,
                         layer=text.layer, use_attention_mask=text.use_attention_mask,
                         source=source or text.source, missing_caption=text.missing_caption)


def layout_conditioner(config, *_) -> LayoutConditioner:
  """Boxes + class tokens (config.data.num_classes classes) through a transformer trained with the UNet."""
  layout = config.ldm.conditioning.layout
  tokenizer = LayoutTokenizer(config.data.num_classes, layout.bins, layout.max_objects)
  image_size = (config.data.image_size, config.data.image_width or config.data.image_size)
  return LayoutConditioner(tokenizer, trained_encoder(len(tokenizer), tokenizer.model_max_length, layout,
                                                      config.ldm.model.dtype), layout.box_map, image_size)


# Conditioner name -> fn(config, text_source, pipeline_text) building it from config.ldm.conditioning (and
# config.data, config.autoencoder). Conditioners of the first stage's space are bound to it by ldm.describe.
CONDITIONERS = {
    "class": lambda config, *_: ClassConditioner(config.data.num_classes),
    "text": text_conditioner,
    "concat": lambda config, *_: ConcatConditioner(**config.ldm.conditioning.concat),
    "inpaint": lambda config, *_: InpaintConditioner(mask_options(config), config.ldm.conditioning.inpaint.keep_known,
                                                     config.ldm.conditioning.inpaint.paste_known),
    "low_res": lambda config, *_: LowResConditioner(config.autoencoder.model.in_channels,
                                                    **config.ldm.conditioning.low_res),
    "segmentation": lambda config, *_: SegmentationConditioner(**config.ldm.conditioning.segmentation),
    "layout": layout_conditioner,
}


def from_config(config, text_source: str | None = None, pipeline_text: tuple | None = None) -> Conditioning:
  """The Conditioning of config.ldm.conditioning.kinds (() = unconditional); see text_conditioner for the rest."""
  cfg = config.ldm.conditioning
  unknown = [kind for kind in cfg.kinds if kind not in CONDITIONERS]
  if unknown:
    raise ValueError(f"Unknown conditioning kind(s) {unknown} (config.ldm.conditioning.kinds); "
                     f"known: {sorted(CONDITIONERS)}.")
  return Conditioning([CONDITIONERS[kind](config, text_source, pipeline_text) for kind in cfg.kinds], cfg.drop_prob)


def first_stage_image_fn(config, factor: int):
  """image [H, W, C] -> what the autoencoder stage trains on: the image, or its bicubic residual when the model is
  residual super-resolution (config.ldm.conditioning.low_res.residual; `factor`: the autoencoder's)."""
  if "low_res" in config.ldm.conditioning.kinds:
    return CONDITIONERS["low_res"](config).with_factor(factor).first_stage_image
  return lambda image: image


__all__ = ["CONDITIONERS", "ClassConditioner", "ConcatConditioner", "Conditioner", "Conditioning", "InpaintConditioner",
           "LayoutConditioner", "LayoutTokenizer", "LowResConditioner", "SegmentationConditioner", "TextConditioner",
           "first_stage_image_fn", "from_config", "layout_conditioner", "merge_params", "text_conditioner",
           "trained_encoder"]
