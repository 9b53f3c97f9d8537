"""Defaults shared by every experiment; variants import this and change a few fields.

Not meant to be run as is: a variant picks the data set, sizes and step counts, e.g.
  python -m latent_diffusion.train --config=configs/quickstart.py --workdir=runs/quickstart
"""

import ml_collections


def optimizer(lr: float, warmup_steps: int) -> ml_collections.ConfigDict:
  """AdamW with linear warmup then cosine decay, global-norm gradient clipping."""
  return ml_collections.ConfigDict(dict(
      # Peak learning rate, reached after warmup_steps.
      lr=lr,
      # Linear warmup from 0 to lr, in optimizer steps.
      warmup_steps=warmup_steps,
      # 'cosine' decays to lr * final_lr_fraction at the last train step; 'constant' keeps lr.
      schedule="cosine",
      final_lr_fraction=0.1,
      # Adam moments and decoupled weight decay.
      b1=0.9,
      b2=0.999,
      weight_decay=0.0,
      # Clip gradients to this global L2 norm (0 disables).
      grad_clip=1.0,
      # Split each batch into this many microbatches and average their gradients (gradient
      # accumulation inside the one jitted step: same update, 1/microbatches activation memory).
      microbatches=1,
  ))


def loop(train_steps: int) -> ml_collections.ConfigDict:
  """How long a stage trains and how often it logs, evaluates and checkpoints."""
  return ml_collections.ConfigDict(dict(
      # Optimizer steps of the stage.
      train_steps=train_steps,
      # Host syncs happen only at these intervals.
      log_every_steps=100,
      eval_every_steps=1000,
      checkpoint_every_steps=500,
      # Checkpoints kept on disk (the newest ones).
      keep_checkpoints=2,
      # EMA decay of the parameters (the EMA weights are what sampling uses).
      ema_decay=0.999,
      # A step whose loss or gradient norm is not finite is skipped (state unchanged) and counted; this
      # many in a row stop the run with NonFiniteError (checked at log and checkpoint steps, no per-step sync).
      max_consecutive_nonfinite_steps=10,
  ))


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Root seed: every random stream is folded from it (stage, step, process).
  config.seed = 0
  # Jobs run in this order by latent_diffusion.train; names from latent_diffusion.pipeline.STAGES.
  config.stages = ("autoencoder", "ldm", "evaluate")

  config.mesh = ml_collections.ConfigDict(dict(
      # Device mesh (data, fsdp, tensor) within a slice / host group (ICI); -1 fills with the remaining devices.
      shape=(-1, 1, 1),
      # Mesh across slices (TPU multi-slice) or hosts (GPU clusters) over the data-center network;
      # the full mesh is shape * dcn_shape per axis. Keep fsdp and tensor inside ICI: dcn_shape=(slices, 1, 1).
      dcn_shape=(1, 1, 1),
      axes=("data", "fsdp", "tensor"),
      # Logical axis name -> mesh axis (None = replicated); parameters and batches follow these.
      # In a parameter, a mesh axis already taken by an earlier dimension is skipped (Flax rule order).
      rules=(("batch", ("data", "fsdp")), ("conv_out", "fsdp"), ("mlp", "fsdp"), ("heads", "tensor"),
             ("embed", "fsdp")),
  ))

  config.data = ml_collections.ConfigDict(dict(
      # Data set by name (latent_diffusion.data.DATASETS).
      name="digits",
      # Square image side in pixels after resizing.
      image_size=16,
      # Global batch size (split over the data x fsdp mesh axes).
      batch_size=64,
      # Examples held out for validation.
      val_examples=297,
      # Number of classes of the labels (class-conditional models add one 'null' class for CFG).
      num_classes=10,
  ))

  config.autoencoder = ml_collections.ConfigDict(dict(
      model=dict(
          # Image channels in and out.
          in_channels=1,
          # Base channels and per-level multipliers; downsampling factor f = 2**(len(ch_mult)-1).
          ch=128,
          ch_mult=(1, 2, 4, 4),
          num_res_blocks=2,
          # Latent channels.
          z_channels=4,
          embed_dim=4,
          # GroupNorm groups.
          groups=32,
          dropout=0.0,
          # Compute dtype: float32 | bfloat16 (TPU/GPU); parameters stay float32.
          dtype="float32",
      ),
      loss=dict(
          # Pixel reconstruction loss by name (latent_diffusion.training.autoencoder.RECONSTRUCTION_LOSSES).
          reconstruction="l1",
          # Weight of the KL(posterior || N(0, I)) term, summed over latent elements per image.
          kl_weight=1e-6,
      ),
      optim=optimizer(lr=4.5e-6 * 64, warmup_steps=500),
      loop=loop(train_steps=100_000),
  ))

  config.ldm = ml_collections.ConfigDict(dict(
      model=dict(
          model_channels=224,
          channel_mult=(1, 2, 3, 4),
          num_res_blocks=2,
          # Downsample rates (1 = latent resolution) that get attention.
          attention_resolutions=(2, 4, 8),
          # Heads by count (-1 = unused) or by channels per head.
          num_heads=-1,
          num_head_channels=32,
          transformer_depth=1,
          # Cross-attention context width (None: no cross-attention).
          context_dim=ml_collections.config_dict.placeholder(int),
          use_linear_projection=False,
          # Label embeddings incl. the 'null' label used for classifier-free guidance.
          num_classes=ml_collections.config_dict.placeholder(int),
          use_scale_shift_norm=True,
          dropout=0.0,
          groups=32,
          # Compute dtype: float32 | bfloat16 (TPU/GPU); parameters and optimizer state stay float32.
          dtype="float32",
          # Rematerialise each ResNet / attention block in the backward pass: none | dots | full.
          remat_policy="none",
      ),
      diffusion=dict(
          # Beta schedule by name: linear | scaled_linear | cosine.
          beta_schedule="linear",
          num_timesteps=1000,
          beta_start=0.0015,
          beta_end=0.0195,
          # What the UNet predicts: epsilon | v_prediction.
          prediction_type="epsilon",
      ),
      # Directory of latent shards from latent_diffusion.encode; None: encode config.data in memory.
      latents_path=ml_collections.config_dict.placeholder(str),
      # Latent scale: if scale_by_std, 1/std of the first batch's latents (LDM); else scale_factor.
      scale_by_std=True,
      scale_factor=1.0,
      # Probability of replacing the condition by the null condition (classifier-free guidance).
      cond_drop_prob=0.1,
      optim=optimizer(lr=1e-4, warmup_steps=1000),
      loop=loop(train_steps=200_000),
  ))

  config.sample = ml_collections.ConfigDict(dict(
      # Sampler by name (latent_diffusion.diffusion.SAMPLERS): ddim | ddpm | plms | dpm_solver_pp.
      sampler="ddim",
      num_steps=50,
      # DDIM noise (0 = deterministic ODE sampler, 1 = DDPM-like).
      eta=0.0,
      # Timestep spacing: leading | trailing | linspace (DPM-Solver++ is usually run with linspace).
      spacing="leading",
      # Classifier-free guidance scale (1 = no guidance).
      guidance_scale=3.0,
      # Images per call of the compiled sampler.
      batch_size=100,
  ))

  config.encode = ml_collections.ConfigDict(dict(
      # Images per encoder call, over all processes (latent_diffusion.encode).
      batch_size=64,
      # Source records per output shard (the unit of resumption). Each shard starts a new encoder batch
      # (bitwise-equal resumes), so a multiple of batch_size / processes wastes no slots.
      records_per_shard=1024,
      # 'moments' stores posterior mean and log-variance; 'sample' one z ~ q(z|x) per image.
      output="moments",
      # Stored latent dtype: float32 | bfloat16 | float16.
      dtype="float32",
      # Seed of the stored samples (output='sample'): record i always gets the same z.
      seed=0,
      # Records whose shorter side is below this many pixels are skipped (and counted).
      min_size=0,
      # Decoding threads per process.
      num_threads=4,
      # A local tokenizer folder (e.g. a pipeline's tokenizer/): also store the caption's token ids.
      tokenizer=ml_collections.config_dict.placeholder(str),
      log_every_steps=20,
  ))

  config.evaluate = ml_collections.ConfigDict(dict(
      # Generated samples per class judged by the digits classifier.
      samples_per_class=50,
      # Columns of the sample grid (one row per class).
      grid_columns=10,
  ))
  return config
