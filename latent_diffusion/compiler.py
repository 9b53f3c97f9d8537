"""XLA compiler options of the heavy executables (train steps, samplers, the pre-encoder): an explicit per-backend choice.

config.compiler.cpu_library_fusions names the ops XLA:CPU hands to its YNNPACK library; the rest go to XLA's own
kernels (Eigen convolutions and matmuls, fused loops). jaxlib 0.10.2's own default sends dots, convolutions and
reductions. On an AMD EPYC (Zen 3) YNNPACK's 3x3 convolution filter gradients ran 1.5-2.6x slower than Eigen's and
its forward convolutions 6-12 % slower, and the cpu-small train step took 4.31 s instead of 4.8 s on one core
(benchmarks/README.md, "Results by CPU kind"), so 'auto' keeps convolutions out on the CPU. Other backends get no
options.

Jobs call `configure(config)` once after parsing their config; jit sites pass `jit_options()` as jax.jit's
compiler_options. Without configure() the 'auto' choice applies, so library users get the same executables.
"""

import jax

# Names accepted in config.compiler.cpu_library_fusions -> XLA DebugOptions.LibraryFusionType enum values.
LIBRARY_FUSIONS = {"dot": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT", "convolution": "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
                   "reduce": "LIBRARY_FUSION_TYPE_REDUCE", "elementwise": "LIBRARY_FUSION_TYPE_ELTWISE"}
AUTO_CPU_LIBRARY_FUSIONS = ("dot", "reduce")
_OPTION = "xla_cpu_experimental_ynn_fusion_type"

_setting = "auto"


def configure(config) -> None:
  """Takes config.compiler.cpu_library_fusions for the executables this process compiles from now on."""
  global _setting
  _names(config.compiler.cpu_library_fusions)   # refused now, not at the first compile
  _setting = config.compiler.cpu_library_fusions


def _names(setting: str) -> tuple[str, ...] | None:
  """'auto' -> AUTO_CPU_LIBRARY_FUSIONS, 'xla_default' -> None (XLA's own choice), 'none' -> (), 'a,b' -> (a, b)."""
  if setting == "auto":
    return AUTO_CPU_LIBRARY_FUSIONS
  if setting == "xla_default":
    return None
  names = () if setting == "none" else tuple(name.strip() for name in setting.split(","))
  if not set(names) <= set(LIBRARY_FUSIONS):
    raise ValueError(f"config.compiler.cpu_library_fusions={setting!r}: expected 'auto', 'xla_default', 'none' or "
                     f"comma-separated names of {sorted(LIBRARY_FUSIONS)}.")
  return names


def jit_options(backend: str | None = None) -> dict[str, str]:
  """compiler_options for jax.jit on `backend` (default: jax.default_backend()) under the configured setting."""
  names = _names(_setting)
  if (backend or jax.default_backend()) != "cpu" or names is None:
    return {}
  return {_OPTION: ",".join(LIBRARY_FUSIONS[name] for name in names)}
