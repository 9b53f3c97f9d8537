"""The CPU library-fusion choice: what each setting asks XLA for, that it reaches the executable, same numbers."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from latent_diffusion import compiler


def _configure(setting: str):
  compiler.configure(ml_collections.ConfigDict({"compiler": {"cpu_library_fusions": setting}}))


@pytest.fixture(autouse=True)
def _restore_auto():
  yield
  _configure("auto")


def test_settings_map_to_xla_options_on_cpu_only():
  assert compiler.jit_options("cpu") == {
      "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
  assert compiler.jit_options("tpu") == {} and compiler.jit_options("gpu") == {}
  _configure("xla_default")
  assert compiler.jit_options("cpu") == {}
  _configure("none")
  assert compiler.jit_options("cpu") == {"xla_cpu_experimental_ynn_fusion_type": ""}
  _configure("convolution, dot")
  assert compiler.jit_options("cpu")["xla_cpu_experimental_ynn_fusion_type"] == (
      "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT")


def test_unknown_fusion_name_is_refused_when_configured():
  with pytest.raises(ValueError, match=r"cpu_library_fusions='dot,conv'.*'convolution'"):
    _configure("dot,conv")
  assert compiler.jit_options("cpu")["xla_cpu_experimental_ynn_fusion_type"].count(",") == 1   # 'auto' kept


def test_auto_keeps_convolutions_out_of_ynnpack_with_the_same_gradients():
  """A 3x3 convolution's kernel gradient: YNNPACK fusions under 'xla_default', XLA's kernels under 'auto'."""
  rng = np.random.default_rng(0)
  x, kernel = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((2, 16, 16, 32), (3, 3, 32, 32)))
  loss = lambda k: jnp.sum(jnp.sin(jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))))
  compiled = {}
  for setting in ("xla_default", "auto"):
    _configure(setting)
    compiled[setting] = jax.jit(jax.grad(loss), compiler_options=compiler.jit_options()).lower(kernel).compile()
  assert "__ynn_fusion" in compiled["xla_default"].as_text()
  assert "__ynn_fusion" not in compiled["auto"].as_text()
  got, want = compiled["auto"](kernel), compiled["xla_default"](kernel)
  assert float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want)) < 1e-5
