"""Command-line entry points: `ldm-<job>` console scripts = `python -m latent_diffusion.cli.<job>`.

train (the stages of config.stages), evaluate (the evaluate stage of a trained run), sample, encode (latent shards),
export (a diffusers folder); job_flags: the multi-host flags of train and encode and how jobs end on bad input.
"""

import sys
from collections.abc import Callable

from absl import app, flags

from latent_diffusion import host_memory


def run_main(main: Callable[[list[str]], None], module: str, flags_parser: Callable | None = None,
             own_allocator: bool = False) -> None:
  """Runs `main` under absl as `python -m <module>` does; as a console script too, where the program is not
  `module`: its flags become the program's key flags, so that `--help` lists them. own_allocator: first re-execute
  with the allocator latent_diffusion.host_memory picks for XLA:CPU's per-call buffers (mimalloc, else glibc's huge
  pages), for jobs that call one executable many times (train, encode)."""
  if own_allocator:
    host_memory.relaunch_with_allocator()
  for flag in flags.FLAGS.get_key_flags_for_module(module):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(main, **({"flags_parser": flags_parser} if flags_parser else {}))
