"""Launch scripts: hostile values (spaces, quotes, $(...)) reach the remote job as literal text, and
a preempted SLURM job (exit 75) is requeued. Cloud tools are replaced by recorders on PATH."""

import json
import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
# Appends its name and argv (NUL-separated, then an ASCII record separator) to $RECORD; then acts
# just enough for the script to go on (a clone makes its folder, `python3 -m venv` an activate file).
RECORDER = """#!/usr/bin/env bash
{ printf '%s\\0' "$(basename "$0")" "$@"; printf '\\036'; } >> "$RECORD"
case "$(basename "$0") $1" in
  "git clone") mkdir -p "${@: -1}" ;;
  "python3 -m") mkdir -p .venv/bin && : > .venv/bin/activate ;;
  "srun "*) exit "${SRUN_EXIT:-0}" ;;
esac
"""
HOSTILE = {"workdir": "/tmp/run dir/$(touch pwned1)'\"", "branch": "fix/$(touch pwned2)",
           "repo": "https://example.invalid/r.git; touch pwned3", "arg": "--config.note=a b;$(touch pwned4)`x`"}


def _tools(directory: pathlib.Path, *names: str) -> pathlib.Path:
  directory.mkdir(parents=True, exist_ok=True)
  for name in names:
    (directory / name).write_text(RECORDER)
    (directory / name).chmod(0o755)
  return directory


def _calls(record: pathlib.Path) -> list[list[str]]:
  return [call.rstrip("\0").split("\0") for call in record.read_text().split("\x1e") if call]


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "launch").glob("*.sh")) + ["slurm.sbatch"])
def test_scripts_parse(script):
  assert subprocess.run(["bash", "-n", str(REPO / "launch" / script)]).returncode == 0


def test_tpu_pod_command_quotes_every_value(tmp_path):
  record = tmp_path / "record"
  bin_dir = _tools(tmp_path / "bin", "gcloud", "git", "python3", "python")
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", RECORD=str(record), REPO_URL=HOSTILE["repo"],
             BRANCH=HOSTILE["branch"])
  launched = subprocess.run(["bash", str(REPO / "launch" / "tpu_vm_pod.sh"), "my-tpu", "us-central2-b",
                             HOSTILE["workdir"], "--config=configs/quickstart.py", HOSTILE["arg"]],
                            env=env, cwd=tmp_path, capture_output=True, text=True)
  assert launched.returncode == 0, launched.stderr
  (gcloud,) = _calls(record)
  command = next(a for a in gcloud if a.startswith("--command="))[len("--command="):]
  record.unlink()
  worker = tmp_path / "worker"   # what every TPU worker runs, in a sandbox with the recorders
  worker.mkdir()
  ran = subprocess.run(["bash", "-c", command], env=env, cwd=worker, capture_output=True, text=True)
  assert ran.returncode == 0, ran.stderr
  calls = _calls(record)
  assert ["git", "clone", "--branch", HOSTILE["branch"], "--", HOSTILE["repo"], "latent_diffusion"] in calls
  assert ["git", "fetch", "-q", "origin", HOSTILE["branch"]] in calls
  assert ["python", "-m", "latent_diffusion.cli.train", "--auto_distributed", f"--workdir={HOSTILE['workdir']}",
          "--config=configs/quickstart.py", HOSTILE["arg"]] in calls
  installs = [c for c in calls if c[:4] == ["python", "-m", "pip", "install"]]
  assert all(a.startswith("-") or "==" in a or a == "requirements.txt" or "://" in a for c in installs for a in c[4:])
  assert not list(tmp_path.rglob("pwned*"))   # nothing was executed from the values


def test_tpu_pod_refuses_an_unknown_job(tmp_path):
  env = dict(os.environ, JOB="train; rm -rf /", REPO_URL="https://example.invalid/r.git")
  refused = subprocess.run(["bash", str(REPO / "launch" / "tpu_vm_pod.sh"), "tpu", "zone", "gs://b/run"], env=env,
                           capture_output=True, text=True)
  assert refused.returncode == 2 and "JOB must be train or encode" in refused.stderr


@pytest.mark.parametrize("srun_exit, requeued, status", [(75, True, 0), (1, False, 1), (0, False, 0)])
def test_slurm_requeues_a_preempted_job(tmp_path, srun_exit, requeued, status):
  record = tmp_path / "record"
  bin_dir = _tools(tmp_path / "bin", "srun", "scontrol")
  submit = tmp_path / "submit"
  (submit / ".venv" / "bin").mkdir(parents=True)
  (submit / ".venv" / "bin" / "python").write_text("#!/bin/sh\n")
  (submit / ".venv" / "bin" / "python").chmod(0o755)
  (submit / ".venv" / "bin" / "activate").write_text("")
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", RECORD=str(record), SLURM_SUBMIT_DIR=str(submit),
             SLURM_JOB_ID="1234", SRUN_EXIT=str(srun_exit))
  ran = subprocess.run(["bash", str(REPO / "launch" / "slurm.sbatch"), HOSTILE["workdir"], HOSTILE["arg"]], env=env,
                       capture_output=True, text=True)
  assert ran.returncode == status, ran.stderr
  calls = _calls(record)
  assert calls[0] == ["srun", "--kill-on-bad-exit=1", "python", "-m", "latent_diffusion.cli.train", "--auto_distributed",
                      f"--workdir={HOSTILE['workdir']}", HOSTILE["arg"]]
  assert (["scontrol", "requeue", "1234"] in calls) == requeued


@pytest.mark.slow
def test_local_launcher_runs_two_processes_and_shows_process_0(tmp_path):
  """README's one-machine launcher, as typed: 2 processes x 1 CPU device over gloo (data over DCN), a short
  stage 1; process 0's progress and summary reach the console at once, every process writes its log."""
  workdir = tmp_path / "run"
  launched = subprocess.run(
      ["bash", "launch/local_multiprocess.sh", "2", "1", str(workdir), "--config=configs/tiny.py",
       "--config.stages=('autoencoder',)", "--config.autoencoder.loop.train_steps=20",
       "--config.mesh.shape=(1, 1, 1)", "--config.mesh.dcn_shape=(2, 1, 1)"],
      cwd=REPO, capture_output=True, text=True, timeout=900)
  assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
  assert launched.stdout.startswith("Starting 2 processes x 1 devices")
  assert "autoencoder  step 20/20 (100%)" in launched.stdout       # process 0's last progress line, shown live
  assert sorted(p.name for p in workdir.glob("process_*.log")) == ["process_0.log", "process_1.log"]
  assert json.loads((workdir / "metrics.json").read_text())["autoencoder"]["train_steps"] == 20
