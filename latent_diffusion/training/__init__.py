"""Training of both stages: state, steps, the loop and checkpoints.

(A package named `train` would shadow the `latent_diffusion.cli.train` CLI module, hence `training`.)
"""
