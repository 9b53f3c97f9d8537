"""latent_diffusion: Latent Diffusion Models (Rombach et al., CVPR 2022) in JAX/Flax."""
