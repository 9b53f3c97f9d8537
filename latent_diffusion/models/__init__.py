"""Flax Linen models (NHWC, pure functions of params and inputs)."""

from latent_diffusion.models.autoencoder import (AutoencoderKL, DiagonalGaussian, Decoder, Encoder, Quantized,
                                                 VectorQuantizer, VQModel)
from latent_diffusion.models.text import BertEncoder, CLIPTextTransformer
from latent_diffusion.models.unet import UNet
