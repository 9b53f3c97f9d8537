"""Runs latent_diffusion.cli.encode with its arguments and sends itself a signal at the N-th record write.

  python -c "$KILLER" --config=... --input=... (env KILL_AT_WRITE=N, SIGNAL=SIGKILL|SIGTERM)
Mid-shard: the earlier records of that shard are in its .partial file, as a preempted or crashed job leaves them.
"""

import textwrap

KILLER = textwrap.dedent("""
    import os, signal, sys
    from latent_diffusion.data import latent_shards
    from latent_diffusion.cli import encode
    from absl import app
    writes, kill_at, sig = [0], int(os.environ["KILL_AT_WRITE"]), getattr(signal, os.environ["SIGNAL"])
    original = latent_shards.ShardWriter.write
    def write(self, example):
      writes[0] += 1
      if writes[0] == kill_at:   # mid-shard: earlier records of this shard are in its .partial file
        os.kill(os.getpid(), sig)
      original(self, example)
    latent_shards.ShardWriter.write = write
    sys.argv = ["encode"] + sys.argv[1:]
    app.run(encode.main, flags_parser=encode.configuration.flags_parser)
""")
