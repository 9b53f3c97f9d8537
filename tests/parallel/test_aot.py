"""AOT compiles of the stage-2 train step and the sampler for a TPU topology (benchmarks/aot.py), in the AOT venv.

The venv (benchmarks/venvs.aot_python: ours plus libtpu) is built once per machine (~15 s, cached under
venvs.home()); the compiles run in its subprocess so that this process never loads libtpu.
"""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import venvs  # noqa: E402  pylint: disable=wrong-import-position
from tpu_topology import collective_bytes, count_collectives  # noqa: E402  pylint: disable=wrong-import-position


def _aot(env: dict, *flags: str) -> list[dict]:
  """The JSON reports of benchmarks/aot.py on the tiny config for v5p 2x2x1 (4 chips), run in the AOT venv."""
  out = subprocess.run([str(venvs.aot_python()), str(ROOT / "benchmarks" / "aot.py"),
                        f"--config={ROOT / 'configs' / 'tiny.py'}", "--topology=v5p:2x2x1", *flags],
                       env=dict(env, JAX_PLATFORMS="cpu"), cwd=ROOT, capture_output=True, text=True, timeout=900,
                       check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  reports = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  assert reports and not any("error" in r for r in reports), out.stdout
  return reports


@pytest.fixture(scope="module")
def tiny_on_v5p(cached_compiles_env) -> dict:
  """{(data, fsdp, tensor): report} of the tiny config's step: mesh data 4, fsdp 4, and data 2 x tensor 2."""
  reports = _aot(cached_compiles_env, "--mesh=4,1,1", "--mesh=1,4,1", "--mesh=2,1,2")
  return {tuple(r["mesh"][axis] for axis in ("data", "fsdp", "tensor")): r for r in reports}


def test_mesh_splits_physical_axes_for_fsdp_8_on_a_v6e_256_slice():
  """data 32 x fsdp 8 on v6e 16x16: 8 and 32 are not products of the torus's axes, which jax.make_mesh refuses off
  v5e; parallel.make_mesh splits a physical axis instead, each fsdp group a run of 8 neighbours on one ring."""
  script = (
      "import sys; sys.path[:0] = [sys.argv[1], sys.argv[1] + '/benchmarks']\n"
      "from tpu_topology import topology_devices\n"
      "from latent_diffusion import parallel\n"
      "from latent_diffusion.configs import sd15_v6e\n"
      "config = sd15_v6e.get_config(); config.mesh.shape = (32, 8, 1)\n"
      "mesh = parallel.make_mesh(config.mesh, topology_devices('v6e:16x16'))\n"
      "print(dict(mesh.shape), len(set(mesh.devices.flat)))\n"
      "print([d.coords for d in mesh.devices[5, :, 0]])\n")
  out = subprocess.run([str(venvs.aot_python()), "-c", script, str(ROOT)], env={"JAX_PLATFORMS": "cpu", "PATH": ""},
                       capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  shape, group = out.stdout.strip().splitlines()[-2:]
  assert shape == "{'data': 32, 'fsdp': 8, 'tensor': 1} 256"
  coords = json.loads(group)
  varying = [axis for axis in range(3) if len({c[axis] for c in coords}) > 1]
  positions = sorted(c[varying[0]] for c in coords) if len(varying) == 1 else []
  assert positions == list(range(positions[0], positions[0] + 8)), coords


def test_collectives_are_counted_once_with_their_result_bytes():
  """A synchronous tuple all-reduce and an async all-gather pair (its -start's type also holds the operand)."""
  hlo = """
  %all-reduce.1 = (bf16[640,5120]{1,0:T(8,128)(2,1)}, f32[320]{0:T(512)}) all-reduce(%a, %b), to_apply=%add
  %gte = bf16[640,5120]{1,0} get-tuple-element(%all-reduce.1), index=0
  %all-gather-start.2 = (f32[8,16]{1,0}, f32[32,16]{1,0}) all-gather-start(%c), dimensions={0}
  ROOT %all-gather-done.2 = f32[32,16]{1,0} all-gather-done(%all-gather-start.2)
  """
  assert count_collectives(hlo) == {"all-reduce": 1, "all-gather": 1, "reduce-scatter": 0, "collective-permute": 0,
                                    "all-to-all": 0}
  assert collective_bytes(hlo) == {"all-reduce": 640 * 5120 * 2 + 320 * 4, "all-gather": 32 * 16 * 4,
                                   "reduce-scatter": 0, "collective-permute": 0, "all-to-all": 0}


def test_fsdp_4_holds_a_quarter_of_params_and_optimizer_per_chip(tiny_on_v5p):
  data, fsdp = tiny_on_v5p[4, 1, 1], tiny_on_v5p[1, 4, 1]
  one, four = data["params_and_optimizer_bytes"], fsdp["params_and_optimizer_bytes"]
  # Not exactly 1/4: GroupNorm scales / biases ('norm') and dimensions fsdp does not divide stay whole.
  assert 0.25 <= four / one <= 0.3, (one, four)
  # The compiled step's arguments (params, EMA, AdamW moments, the batch) shrink alike.
  assert fsdp["hbm_arguments_gib"] / data["hbm_arguments_gib"] <= 0.35


def test_report_is_a_tpu_compile_with_cost_model_figures(tiny_on_v5p):
  for r in tiny_on_v5p.values():
    # The tiny config's attention_impl 'auto', resolved as on a TPU host.
    assert r["device_kind"].startswith("TPU v5") and r["chips"] == 4 and r["attention"] == "xla_probs"
    assert r["flops"] > 0 and r["hbm_peak_gib"] > 0 and r["fits"]
  # Data parallelism all-reduces gradients; fsdp all-gathers weights and reduce-scatters gradients instead.
  data = tiny_on_v5p[4, 1, 1]
  assert data["collectives"]["all-reduce"] > 0
  # ... all of them, each at least in bfloat16: 2 bytes per trained parameter or more.
  assert data["collective_bytes"]["all-reduce"] >= 2 * data["params"]
  assert tiny_on_v5p[1, 4, 1]["collectives"]["all-gather"] > 0


def test_tensor_sharded_attention_projections_move_no_activations(tiny_on_v5p):
  """Data 2 x tensor 2: the attention projections' kernels are split over 'tensor' by their heads, and off the CPU
  q, k and v are separate matmuls (layers.dense_together), so the step only all-reduces. (With the three kernels
  concatenated, as on XLA:CPU, this step had 32 all-to-alls and 32 collective-permutes.)"""
  collectives = tiny_on_v5p[2, 1, 2]["collectives"]
  assert collectives["all-reduce"] > 0
  assert collectives["all-to-all"] == 0 and collectives["collective-permute"] == 0, collectives


def test_splash_attention_compiles_inside_the_train_step_and_the_sampler_for_v5p(cached_compiles_env):
  """attention_impl='splash': the Pallas kernel lowered for TPU in the data-parallel step (shard_map per chip), and
  in the text/class-to-image sampler (aot.py --program=sample: whole sampler + one denoising step)."""
  train, sample = _aot(cached_compiles_env, "--mesh=4,1,1", "--attention=splash", "--program=train",
                       "--program=sample", "--config.sample.batch_size=8")
  assert train["program"] == "train" and train["attention"] == "splash" and train["device_kind"].startswith("TPU v5")
  assert train["flops"] > 0 and train["cost_model_s"] > 0
  assert sample["program"] == "sample" and sample["attention"] == "splash" and sample["num_steps"] == 5
  # The whole program (conditioner, one counted loop body, decoder) costs more than one denoising step, and the
  # other 4 steps are counted on top of it.
  assert 0 < sample["step_flops"] < sample["loop_once_flops"]
  assert sample["flops"] == sample["loop_once_flops"] + 4 * sample["step_flops"]
  assert sample["cost_model_s_per_image"] > 0
  # Classifier-free guidance pairs each example's cond and uncond rows on its own chip: the data-parallel sampler
  # moves no rows between chips (with [cond; uncond] concatenated: 19 collective-permutes, 2 all-to-alls).
  moves = ("collective-permute", "all-to-all")
  assert all(sample[part][kind] == 0 for part in ("collectives", "step_collectives") for kind in moves), sample
