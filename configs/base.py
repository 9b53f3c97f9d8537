"""Defaults shared by every experiment; variants import this and change a few fields.

Not meant to be run as is: a variant picks the data set, sizes and step counts, e.g.
  python -m latent_diffusion.cli.train --config=configs/quickstart.py --workdir=runs/quickstart
"""

import ml_collections


def optimizer(lr: float, warmup_steps: int, b1: float = 0.9, b2: float = 0.999) -> ml_collections.ConfigDict:
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
      b1=b1,
      b2=b2,
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
      # Global batch size of the stage's training steps (split over the data x fsdp mesh axes); 0 = config.data.
      # batch_size. Lets the two stages differ (e.g. a cheap autoencoder batch and a larger LDM batch).
      batch_size=0,
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


def eval_source(kind: str, **overrides) -> ml_collections.ConfigDict:
  """An entry of config.evaluate.sources (latent_diffusion.evaluation.sources)."""
  return ml_collections.ConfigDict(dict(
      # generated | split | reconstruction.
      kind=kind,
      # split / reconstruction: the data split, and how many of its images (0 = all, else a fixed uniform subset).
      split="val",
      max_examples=0,
      # generated: the guidance scale (None: config.sample.guidance_scale), and collapsed=True draws one sample
      # per class and repeats it (a mode-collapsed generator, for sensitivity checks).
      guidance_scale=ml_collections.config_dict.placeholder(float),
      collapsed=False,
  ) | overrides)


def evaluator(type_name: str, **overrides) -> ml_collections.ConfigDict:
  """An entry of config.evaluate.evals: evaluator `type_name` (latent_diffusion.evaluation.EVALUATORS)."""
  return ml_collections.ConfigDict(dict(
      type=type_name,
      # The source evaluated, and what it is compared with: a source name or a reference .npz (mu, sigma; FID).
      samples="samples",
      reference="val",
      # memorization: the training images whose nearest neighbours are measured.
      train="train",
      # The feature network and which of its outputs: digits_cnn features | inception pool3; the
      # inception_score type takes logits (inception logits_unbiased).
      network="digits_cnn",
      output="features",
      # precision_recall: k of the k-NN balls.
      k=3,
      # kid: random subsets and their size (torch-fidelity's defaults).
      subsets=100,
      subset_size=1000,
      # inception_score: splits of the samples.
      splits=10,
  ) | overrides)


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Root seed: every random stream is folded from it (stage, step, process).
  config.seed = 0
  # Jobs run in this order by latent_diffusion.cli.train; names from latent_diffusion.experiment.STAGES.
  config.stages = ("autoencoder", "ldm", "evaluate")

  config.compiler = ml_collections.ConfigDict(dict(
      # Ops XLA:CPU hands to its YNNPACK library in train steps, samplers and the pre-encoder (latent_diffusion/
      # compiler.py): 'auto' = dot,reduce (convolutions by XLA's Eigen kernels, faster here); 'xla_default' =
      # jaxlib's own choice (dots, convolutions, reductions); 'none'; or comma-separated dot|convolution|reduce|
      # elementwise. Ignored on TPU / GPU. Read by the train and encode jobs; ldm-sample compiles with 'auto'.
      cpu_library_fusions="auto",
  ))

  config.mesh = ml_collections.ConfigDict(dict(
      # Device mesh (data, fsdp, tensor) within a slice / host group (ICI); -1 fills with the remaining devices.
      # On TPU an axis need not be a product of the slice's physical axes (fsdp 8 on v6e 16x16 splits one).
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
      # Data set by name (latent_diffusion.data.DATASETS): digits | digit_pairs | sample_photos | tar_shards |
      # image_folder | tfds.
      name="digits",
      # Image side in pixels after resizing / cropping (the height, if image_width is set).
      image_size=16,
      # Image width in pixels; None: square images (image_size).
      image_width=ml_collections.config_dict.placeholder(int),
      # Global batch size (split over the data x fsdp mesh axes).
      batch_size=64,
      # digits: examples held out for validation.
      val_examples=297,
      # Number of classes of the labels (class conditioning adds one 'null' class for CFG).
      num_classes=10,
      # tar_shards / image_folder / tfds: where each split is read from: a shard pattern
      # ('laion/{00000..00127}.tar'), a class-folder root (root/<class>/*.jpg) or a TFDS split spec
      # ('train', 'validation[:1000]').
      train_path=ml_collections.config_dict.placeholder(str),
      val_path=ml_collections.config_dict.placeholder(str),
      # tar_shards: folder for the per-shard member indexes (None: next to each shard).
      index_cache_dir=ml_collections.config_dict.placeholder(str),
      # tfds: the prepared data set ('imagenet2012', 'imagenet2012:5.1.0'; ArrayRecord format) and its
      # data_dir (None: $TFDS_DATA_DIR or ~/tensorflow_datasets). Nothing is downloaded.
      tfds_name=ml_collections.config_dict.placeholder(str),
      tfds_data_dir=ml_collections.config_dict.placeholder(str),
      # tfds: a tfds.features.Text feature holding captions (None: the class name is the caption).
      tfds_caption_key=ml_collections.config_dict.placeholder(str),
      # tar_shards / image_folder / tfds: the shorter side is resized to image_size, then an image_size
      # square is cut at the 'center' or a 'random' place. flip (also sample_photos): mirror left-right w.p. 1/2.
      crop="center",
      flip=False,
      # tar_shards / image_folder / tfds: records whose shorter side is below min_size pixels, or whose
      # longer / shorter side exceeds max_aspect_ratio, are skipped (and counted by reason).
      min_size=0,
      max_aspect_ratio=float("inf"),
      # Seed of the random crops and flips (per record and epoch).
      seed=0,
      # name='sample_photos' (latent_diffusion.data.sample_photos): real photographs shipped with scikit-image
      # and scikit-learn, split by photo. Training examples are random crops at the photos' own resolution,
      # validation examples the non-overlapping tiles of the validation photos.
      sample_photos=dict(
          # Photo names (latent_diffusion.data.sample_photos.PHOTOS) of each split.
          train=("astronaut", "chelsea", "rocket", "china", "motorcycle_left", "motorcycle_right",
                 "immunohistochemistry", "hubble_deep_field"),
          val=("coffee", "flower"),
          # Training crops per photo and epoch.
          crops_per_photo=256,
      ),
      # name='digit_pairs' (latent_diffusion.data.digit_pairs): captioned pairs of digits side by side.
      digit_pairs=dict(
          # Training examples drawn per epoch (pairs, templates and digit images at random, fixed by seed).
          examples=10_000,
          # Ordered (left, right) pairs held out of training (of 100), chosen by seed.
          heldout_pairs=20,
          seed=0,
      ),
      # name='shapes' (latent_diffusion.data.shapes): coloured circles / squares / triangles with exact
      # segmentation, boxes and captions (object classes: data.shapes.NUM_OBJECT_CLASSES = 12).
      shapes=dict(
          # Training examples (example i of a split is the same image at any image_size).
          examples=10_000,
          seed=0,
          # Objects per image: 1 to max_objects, their boxes disjoint.
          max_objects=3,
          # Object size (box side) as a fraction of the image side, drawn uniformly.
          min_size=0.25,
          max_size=0.45,
      ),
      # name='photo_crops' (latent_diffusion.data.photos): random crops of the photos shipped with scikit-image and
      # scikit-learn, validation crops from held-out photos.
      photo_crops=dict(
          examples=10_000,
          seed=0,
          # Each photo is shrunk by a random factor in [1, max_shrink] before cropping (more structure per crop).
          max_shrink=6.0,
      ),
  ))

  config.autoencoder = ml_collections.ConfigDict(dict(
      # Latent regularization: 'kl' (AutoencoderKL, a Gaussian posterior) | 'vq' (VQModel, a codebook).
      regularization="kl",
      model=dict(
          # Image channels in and out (must equal the data's: 1 for digits, 3 for photos).
          in_channels=1,
          # Base channels and per-level multipliers; downsampling factor f = 2**(len(ch_mult)-1).
          ch=128,
          ch_mult=(1, 2, 4, 4),
          num_res_blocks=2,
          # Encoder output / decoder input channels.
          z_channels=4,
          # Latent channels (KL) or codebook vector width (VQ).
          embed_dim=4,
          # GroupNorm groups.
          groups=32,
          dropout=0.0,
          # Compute dtype: float32 | bfloat16 (TPU/GPU); parameters stay float32.
          dtype="float32",
      ),
      vq=dict(
          # Codebook size (the paper's VQ-f4 uses 8192).
          num_embeddings=8192,
          # Weight of the commitment term ||h - sg(q)||^2 (VQ-VAE's beta).
          beta=0.25,
          # True puts beta on the codebook term instead, as taming-transformers' VectorQuantizer2 does by
          # default (the released LDM VQ checkpoints were trained so); False is the VQ-VAE paper's loss.
          legacy=False,
          # How the codebook learns: 'loss' (gradient of the codebook term, as LDM) | 'ema' (exponential
          # moving averages of the assigned latents, VQ-VAE-2; the codebook term is then dropped).
          codebook_update="loss",
          # Decay of the codebook statistics (per-code assignment counts, and the EMA codebook).
          ema_decay=0.99,
          # Laplace smoothing of the EMA cluster sizes.
          ema_epsilon=1e-5,
          # Replace codes whose EMA assignment count per step falls below dead_code_threshold by random
          # encoder outputs of the batch (0 disables). A code's expected count is latents per batch / num_embeddings.
          dead_code_threshold=0.0,
      ),
      loss=dict(
          # Per-pixel reconstruction term by name (latent_diffusion.training.autoencoder_loss.RECONSTRUCTION_LOSSES).
          reconstruction="l1",
          # Weight of the LPIPS distance added to every pixel's term (the paper: 1.0; needs autoencoder.lpips files).
          perceptual_weight=0.0,
          # KL: weight of KL(posterior || N(0, I)), summed over latent elements per image (the paper: 1e-6).
          kl_weight=1e-6,
          # VQ: weight of the quantizer's codebook + commitment loss.
          codebook_weight=1.0,
          # KL: the reconstruction NLL is rec / exp(logvar) + logvar per pixel, with a scalar logvar starting
          # here. CompVis declares it a parameter but gives it to no optimizer (it stays at logvar_init);
          # learn_logvar=True trains it with the autoencoder optimizer.
          logvar_init=0.0,
          learn_logvar=False,
          # PatchGAN weight multiplying the adaptive weight (the paper: 0.5); 0 builds no discriminator.
          disc_weight=0.0,
          # The GAN terms (generator and discriminator) are zero before this optimizer step (the paper: 50001).
          disc_start=50_001,
          # Factor of both GAN losses once on.
          disc_factor=1.0,
          # Discriminator loss by name: hinge | vanilla (DISCRIMINATOR_LOSSES).
          disc_loss="hinge",
          # Clamp of the gradient-norm ratio of the adaptive weight.
          max_adaptive_weight=1e4,
      ),
      discriminator=dict(
          # NLayerDiscriminator width and stride-2 layers (3: 70x70 patches; images need sides >= 3 * 2**num_layers).
          ch=64,
          num_layers=3,
          # Compute dtype: float32 | bfloat16; parameters stay float32.
          dtype="float32",
      ),
      lpips=dict(
          # Local LPIPS weights (perceptual loss and the LPIPS metric; nothing is downloaded): a torchvision VGG16
          # state dict (vgg16-397923af.pth) and the lpips v0.1 heads (lpips/weights/v0.1/vgg.pth of the lpips
          # package); .pth needs torch, or convert both to .safetensors.
          vgg_path=ml_collections.config_dict.placeholder(str),
          heads_path=ml_collections.config_dict.placeholder(str),
      ),
      # Keep an EMA of the autoencoder parameters (config.autoencoder.loop.ema_decay); evaluation and later
      # stages use it. False (as LDM's autoencoders): no EMA copy, the trained parameters are used.
      use_ema=True,
      # Autoencoder (+ logvar) optimizer; the paper: Adam(4.5e-6 * batch size, b1=0.5, b2=0.9), constant.
      optim=optimizer(lr=4.5e-6 * 64, warmup_steps=500, b1=0.5, b2=0.9),
      # Discriminator optimizer (the paper: as the autoencoder's).
      disc_optim=optimizer(lr=4.5e-6 * 64, warmup_steps=0, b1=0.5, b2=0.9),
      # Validation during training (every loop.eval_every_steps, and at the end): PSNR, SSIM, LPIPS (with
      # lpips weights), codebook usage (VQ) over at most this many validation images, and a grid of
      # originals over reconstructions of the first grid_images to TensorBoard.
      eval_examples=512,
      grid_images=8,
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
          # (The cross-attention width and the label table size come from the conditioning, not from here.)
          use_linear_projection=False,
          use_scale_shift_norm=True,
          dropout=0.0,
          groups=32,
          # Compute dtype: float32 | bfloat16 (TPU/GPU); parameters and optimizer state stay float32.
          dtype="float32",
          # Rematerialise each ResNet / attention block in the backward pass: none | dots | full.
          remat_policy="none",
          # Attention kernel (models/attention.py): auto | xla | xla_probs | cpu_blocked | cudnn | splash. xla =
          # jax.nn.dot_product_attention (float32 scores); xla_probs = the same XLA ops with a custom VJP that keeps
          # only the unnormalised probabilities in the compute dtype (scores rounded to it before the float32
          # softmax, as diffusers-Flax: 1/3 of the bytes kept for backward in bf16); cpu_blocked = our blocked
          # flash-style CPU kernel; cudnn = cuDNN's fused attention (GPU, bf16 / fp16); splash = Pallas TPU splash
          # attention. auto = cpu_blocked on CPU, xla_probs on TPU, xla on GPU. benchmarks/aot.py resolves auto as a
          # TPU host would.
          attention_impl="auto",
          # Dense-layer matmul (models/layers.py): auto | xla | cpu_flat. cpu_flat = the custom VJP that avoids a
          # transposed copy on XLA:CPU (it computes in the layer dtype, no precision / preferred_element_type), and
          # self-attention's q, k, v as one matmul over their concatenated kernels; xla = lax.dot_general left to
          # autodiff, one matmul per projection (kernels sharded over 'tensor' stay so). auto = cpu_flat on CPU, xla
          # elsewhere.
          linear_impl="auto",
      ),
      diffusion=dict(
          # Beta schedule by name: linear | scaled_linear | cosine.
          beta_schedule="linear",
          num_timesteps=1000,
          beta_start=0.0015,
          beta_end=0.0195,
          # Rescale the betas to zero terminal SNR (Lin et al. 2024; use with v_prediction).
          rescale_zero_terminal_snr=False,
          # What the UNet predicts: epsilon | v_prediction.
          prediction_type="epsilon",
      ),
      conditioning=dict(
          # Conditioners by name (latent_diffusion.conditioning.CONDITIONERS), combined: () = unconditional,
          # ('class',), ('text',), ('concat',), ('text', 'concat') = the paper's hybrid.
          kinds=("class",),
          # Probability of training an example on the null condition (classifier-free guidance).
          drop_prob=0.1,
          text=dict(
              # 'pretrained': a local transformers folder (CLIP text model or BERT-style); 'trained': the paper's
              # BERT-style transformer trained from scratch with the UNet (sizes below).
              encoder="pretrained",
              # Pretrained encoder folder (config.json + model.safetensors); None: <ldm.init_from>/text_encoder.
              encoder_path=ml_collections.config_dict.placeholder(str),
              # Tokenizer folder; None: <ldm.init_from>/tokenizer, else encoder_path.
              tokenizer_path=ml_collections.config_dict.placeholder(str),
              # Train the pretrained encoder with the UNet (else it stays frozen).
              train_encoder=False,
              # Tokens per caption (padded / truncated); None: the tokenizer's model_max_length (77 for CLIP).
              max_length=ml_collections.config_dict.placeholder(int),
              # Encoder output fed to cross-attention: last | penultimate (the layer before the last).
              layer="last",
              # Pass the tokenizer's padding mask to the encoder (Stable Diffusion's CLIP does not).
              use_attention_mask=False,
              # Where training reads text: caption (tokenized here) | tokens | context (stored with the latents
              # by latent_diffusion.cli.encode; context = the frozen encoder's outputs, no encoder in the step).
              source="caption",
              # A record without a caption: 'empty' trains it as the empty prompt (counted), 'skip' drops it.
              missing_caption="empty",
              # Sizes of the 'trained' encoder: width, layers, attention heads, MLP width / width.
              width=512,
              layers=4,
              heads=8,
              mlp_ratio=4,
          ),
          concat=dict(
              # Example field holding the image-shaped condition [h, w, channels] at the latent grid.
              field="concat",
              channels=1,
              # Null condition: 'keep' (the condition defines the task, e.g. inpainting) | 'zeros'.
              null="keep",
          ),
          # 'inpaint' (latent_diffusion.conditioning.inpaint): SD-inpainting's UNet input x_t + mask + masked-image
          # latent (4 + 1 + 4 channels for a 4-channel first stage); masks drawn on device every step.
          inpaint=dict(
              masks=dict(
                  # Probability of a mask covering the whole image / nothing (else boxes and strokes).
                  full_prob=0.1,
                  empty_prob=0.05,
                  # Probability of a mask over one side (left/right/top/bottom) of one object's box, covering
                  # object_part (fractions of the box) of it: Imagen Editor's object masking. Needs data whose
                  # examples hold 'boxes' (shapes); examples without objects get a box-and-stroke mask.
                  object_prob=0.0,
                  object_part=(0.3, 0.7),
                  # Up to this many boxes with sides in box_size (fractions of the shorter image side).
                  max_boxes=2,
                  box_size=(0.15, 0.6),
                  # Up to this many strokes: polylines of stroke_vertices points, segments of stroke_step length,
                  # stroke_width wide (fractions of the shorter side).
                  max_strokes=2,
                  stroke_vertices=4,
                  stroke_width=(0.08, 0.2),
                  stroke_step=(0.1, 0.4),
              ),
              # Sampling keeps the known region: latent cells with every pixel known follow the image's latent
              # (diffusers' 9-channel inpainting pipeline does not; its 4-channel one does).
              keep_known=True,
              # The sampled image takes its known pixels from the input (mask * sample + (1 - mask) * image), as
              # inpainting tools composite (diffusers' 9-channel pipeline does not).
              paste_known=False,
          ),
          # 'low_res' (latent_diffusion.conditioning.low_res): LDM-SR, the low-resolution image at the latent grid
          # (the super-resolution factor is the autoencoder's f), made from each image by data.degradations.
          low_res=dict(
              # Gaussian blur before bicubic downsampling, sigma in high-resolution pixels (0 = none).
              blur_sigma=0.0,
              # Training adds Gaussian noise with a standard deviation drawn from U(0, noise_std) per example
              # (pixels in [-1, 1]; 0 = none).
              noise_std=0.0,
              # True: the autoencoder stage and the LDM model what bicubic upsampling of the low-resolution image
              # misses (image - bicubic_up(low_res), SRDiff / ResShift); samples add bicubic_up(low_res) back.
              residual=False,
              # Iterations of back-projection of each sample onto its input (x += bicubic_up(low_res -
              # bicubic_down(x)); 0 = none; needs blur_sigma = 0).
              back_projection=0,
          ),
          # 'segmentation' (latent_diffusion.conditioning.segmentation): one-hot maps averaged to the latent grid.
          segmentation=dict(
              # Classes of the maps (data.shapes: background + 4 colours = 5).
              num_classes=5,
              # Null condition: 'keep' (no guidance) | 'zeros'.
              null="keep",
          ),
          # 'layout' (latent_diffusion.conditioning.layout): boxes with classes (config.data.num_classes of them) as
          # tokens through a transformer trained with the UNet, by cross-attention.
          layout=dict(
              # Coordinate quantization levels.
              bins=32,
              # Objects a layout may hold (tokens: 2 + 5 max_objects).
              max_objects=3,
              # Sizes of the layout transformer: width, layers, attention heads, MLP width / width.
              width=128,
              layers=2,
              heads=4,
              mlp_ratio=4,
              # Also concatenate to x_t a map of the boxes: per latent cell, the fraction each class's boxes cover
              # (num_classes channels, zeros when the condition is dropped). The model then samples at its
              # trained size only.
              box_map=False,
          ),
      ),
      # Fine-tune this diffusers pipeline folder or original (CompVis / SD) single-file checkpoint: the UNet,
      # VAE, text encoder, noise schedule and latent scale come from it (config.ldm.model sets only dtype and
      # remat_policy then). None: train the UNet from scratch on the autoencoder of config.autoencoder.
      init_from=ml_collections.config_dict.placeholder(str),
      # Directory of latent shards from latent_diffusion.cli.encode; None: encode config.data in memory. Stage 2 checks
      # before it starts that the job finished, wrote records of the configured latent shape, and that its
      # encoder is the first stage this run samples through (autoencoder_workdir).
      latents_path=ml_collections.config_dict.placeholder(str),
      # Workdir of the latent_diffusion.cli.train run whose autoencoder (workdir/autoencoder/) is stage 2's first stage:
      # it encodes in memory, and sampling decodes with it. None: this run's own workdir.
      autoencoder_workdir=ml_collections.config_dict.placeholder(str),
      # Latent scale: if scale_by_std, 1/std of the first batch's latents (LDM); else scale_factor.
      scale_by_std=True,
      scale_factor=1.0,
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
      # Images per encoder call, over all processes (latent_diffusion.cli.encode).
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
      # Text stored with each record, by the tokenizer / encoder of config.ldm.conditioning.text: 'none',
      # 'tokens' (token ids, and the mask with use_attention_mask) or 'context' (also the frozen encoder's
      # outputs, so that stage 2 runs no text encoder: text.source='context').
      text="none",
      log_every_steps=20,
  ))

  config.evaluate = ml_collections.ConfigDict(dict(
      # Generated samples per class of every 'generated' source (class-major order).
      samples_per_class=50,
      # Noise of the generated sources (global batch b of config.sample.batch_size draws from
      # fold_in(key(seed), b): the same samples on any device / process count) and of the fixed subsets.
      seed=3,
      # Columns of the sample grid (one row per class).
      grid_columns=10,
      # At most this many features are kept per (source, network) for the k-NN metrics and KID (a fixed uniform
      # subset beyond it; memory cap x feature size x 4 bytes). FID and IS stream their statistics and keep none.
      max_kept_features=10_000,
      # Image sets the evaluators compare, by name (latent_diffusion.evaluation.sources).
      sources=dict(
          samples=eval_source("generated"),
          samples_no_guidance=eval_source("generated", guidance_scale=1.0),
          collapsed=eval_source("generated", collapsed=True),
          # As many real training images as generated samples: FIDs of equal sample sizes compare.
          train=eval_source("split", split="train", max_examples=500),
          val=eval_source("split", split="val"),
          reconstruction_val=eval_source("reconstruction", split="val"),
      ),
      # Evaluators by name (type from latent_diffusion.evaluation.EVALUATORS); figure names in metrics.json
      # follow the evaluator's name (see evaluators.py). The digits table: FID of the model, of real training
      # images (the floor), of a collapsed generator and without guidance, all against the held-out split.
      evals=dict(
          sample_grid=evaluator("sample_grid"),
          classifier_accuracy=evaluator("classifier_accuracy"),
          fid=evaluator("fid"),
          fid_real_floor=evaluator("fid", samples="train"),
          fid_collapsed=evaluator("fid", samples="collapsed"),
          fid_no_guidance=evaluator("fid", samples="samples_no_guidance"),
          precision_recall=evaluator("precision_recall"),
          precision_recall_collapsed=evaluator("precision_recall", samples="collapsed"),
          precision_recall_no_guidance=evaluator("precision_recall", samples="samples_no_guidance"),
          memorization=evaluator("memorization"),
          reconstruction=evaluator("reconstruction", samples="reconstruction_val"),
          fid_reconstruction=evaluator("fid", samples="reconstruction_val"),
      ),
      # Evaluators (names in evals) also run during stage-2 training every ldm.loop.eval_every_steps on the EMA
      # weights, with this many samples per class; logged to TensorBoard and to metrics.json under 'ldm'
      # ('sample_grid' puts its grid of samples into TensorBoard's images).
      during_training=("fid",),
      training_samples_per_class=10,
      # The FID InceptionV3 (network 'inception'): the local weights file pt_inception-2015-12-05-6726825d.pth
      # (nothing is downloaded), the resize convention (pytorch_fid | torch_fidelity | clean_fid, see
      # evaluation/resizing.py) and whether images are first rounded to 8 bits (as saved PNGs are).
      inception=dict(weights=ml_collections.config_dict.placeholder(str), resize="clean_fid", quantize=True),
      # The digits CNN trained at evaluation time on the real training split (network 'digits_cnn').
      digits_cnn=dict(width=64, train_steps=400, batch_size=64, learning_rate=2e-3, seed=0),
      # The digits SVM judge of classifier_accuracy (network 'svm_judge'): RBF kernel, this C.
      svm_judge=dict(C=10.0),
      # CLIP score (network 'clip'): a local transformers CLIPModel folder, and the prompt of class c:
      # prompt.format(class_names[c]).
      clip=dict(folder=ml_collections.config_dict.placeholder(str), prompt="a photo of the number {}",
                class_names=("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")),
      # Per-image metrics of the 'reconstruction' network (evaluation/reconstruction.py): psnr | ssim | lpips (lpips
      # needs the config.autoencoder.lpips weight files).
      reconstruction=dict(metrics=("psnr", "ssim")),
      # Evaluator 'digit_pairs' (text quickstart, latent_diffusion.evaluation.digit_pairs): prompts per set,
      # each generated image judged half by half.
      digit_pairs=dict(
          samples_seen_pairs=160,
          samples_heldout_pairs=100,
          samples_heldout_templates=120,
          # Rows of samples.png taken from each prompt set.
          grid_rows_per_set=6,
      ),
      # Evaluators 'inpainting', 'semantic', 'layout' and 'super_resolution' (modules of these names in
      # latent_diffusion.evaluation): each conditions the model on held-out examples of config.data and judges
      # what it generates.
      tasks=dict(
          # Held-out examples conditioned on (at each size).
          samples=200,
          # Sizes, as multiples of the training size, at which the semantic and super-resolution evaluators
          # sample.
          size_multipliers=(1, 2),
          # Real training images of the shapes data set that the shape / colour judges are fit on.
          judge_examples=1000,
      ),
  ))
  return config
