"""Evaluation the field uses (FID, KID, IS, precision/recall, CLIP score, reconstruction, memorization),
streamed and sharded over the mesh; evaluators chosen by config.evaluate.evals (see evaluators.py).

Adding an evaluator: a compute function and an EVALUATORS entry in evaluators.py (plus a network in
networks.py if it needs new features), then name it in config.evaluate.evals.
"""

from latent_diffusion.evaluation.evaluators import EVALUATORS, STATISTICS, Request
from latent_diffusion.evaluation.networks import NETWORKS
from latent_diffusion.evaluation.runner import EvalContext, run
from latent_diffusion.evaluation.sources import SOURCE_KINDS
