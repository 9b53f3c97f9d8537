#!/usr/bin/env bash
# Emulates a multi-host run on one machine: N processes (each with D CPU devices) join one JAX
# runtime over gloo, exactly as N hosts of a pod would; process 0 writes metrics and samples.
#   bash launch/local_multiprocess.sh N D WORKDIR [--config=...] [--config.key=value ...]
set -euo pipefail
source "$(dirname "$0")/setup_env.sh" requirements.txt
num_processes="$1"; devices="$2"; workdir="$3"; shift 3
config_args=("$@")
[ ${#config_args[@]} -eq 0 ] && config_args=(--config=configs/quickstart.py)
port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$workdir"
echo "Starting $num_processes processes x $devices devices; logs: $workdir/process_*.log (process 0 shown here)"
run_process() {  # run_process I: process I of the job
  XLA_FLAGS="--xla_force_host_platform_device_count=$devices" python -m latent_diffusion.cli.train \
    --workdir="$workdir" --coordinator_address="127.0.0.1:$port" --num_processes="$num_processes" \
    --process_id="$1" "${config_args[@]}"
}
pids=()
for ((i = 0; i < num_processes; i++)); do
  log="$workdir/process_$i.log"
  # Process 0 prints the progress lines and the summary: to the console as well as to its log.
  if [ "$i" -eq 0 ]; then run_process "$i" > >(tee "$log") 2>&1 & else run_process "$i" > "$log" 2>&1 & fi
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
echo "Logs: $workdir/process_*.log"
exit $status
