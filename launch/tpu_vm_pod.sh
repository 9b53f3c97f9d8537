#!/usr/bin/env bash
# Runs a job on every worker of a Cloud TPU VM pod slice (one process per host; JAX reads the
# coordinator, process count and id from the TPU metadata, hence --auto_distributed).
#   bash launch/tpu_vm_pod.sh TPU_NAME ZONE WORKDIR [--config=...] [--config.key=value ...]
# WORKDIR should be a bucket path (gs://...) or a filesystem every worker shares: orbax writes the
# checkpoint collectively from all hosts; only process 0 writes logs, images and metrics.json.
# JOB=encode runs latent_diffusion.cli.encode instead of latent_diffusion.cli.train (pass its flags).
# Exit code 75: the job was preempted (SIGTERM) and saved a checkpoint; rerun the same command.
set -euo pipefail
tpu="$1"; zone="$2"; workdir="$3"; shift 3
job="${JOB:-train}"
case "$job" in
  train | encode) ;;
  *) echo "JOB must be train or encode, not '$job'." >&2; exit 2 ;;
esac
repo_url="${REPO_URL:-$(git -C "$(dirname "$0")/.." remote get-url origin 2>/dev/null || echo '')}"
branch="${BRANCH:-main}"
[ -n "$repo_url" ] || { echo "Set REPO_URL to a git URL the workers can clone." >&2; exit 2; }
# Every value that enters the remote (bash) command is quoted for it: spaces, quotes or $(...) in a
# path, branch, URL or argument arrive as literal text, never as shell code.
q() { printf '%q' "$1"; }
args=$(printf ' %q' "$@")
remote="set -e
if [ ! -d latent_diffusion ]; then git clone --branch $(q "$branch") -- $(q "$repo_url") latent_diffusion; fi
cd latent_diffusion && git fetch -q origin $(q "$branch") && git checkout -q FETCH_HEAD
python3 -m venv .venv && . .venv/bin/activate
python -m pip install -q pip==26.3
python -m pip install -q -r requirements.txt 'jax[tpu]==0.10.2' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
python -m latent_diffusion.cli.$job --auto_distributed --workdir=$(q "$workdir")$args"
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="$remote"
