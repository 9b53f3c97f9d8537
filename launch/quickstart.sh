#!/usr/bin/env bash
# The main job on a fresh machine (Python 3.11 + pip): install, then train the autoencoder, train a
# class-conditional LDM on the digits, sample a grid and write metrics.json.
#   bash launch/quickstart.sh [WORKDIR] [--config.key=value ...]
set -euo pipefail
source "$(dirname "$0")/setup_env.sh" requirements.txt
workdir="${1:-runs/quickstart}"
shift || true
python -m latent_diffusion.cli.train --config=configs/quickstart.py --workdir="$workdir" "$@"
echo "Samples: $workdir/samples.png   Metrics: $workdir/metrics.json"
cat "$workdir/metrics.json"
