"""Attention kernels (blocked CPU, xla_probs, splash) against the plain softmax formula: values and all three
gradients, f32 and bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_diffusion import host_cpu
from latent_diffusion.models import attention


def _reference(q, k, v):
  scores = jnp.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
  return jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(scores, axis=-1), v)


def _inputs(t, s, seed=0):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.normal(size=shape) * 2, jnp.float32) for shape in ((4, t, 3, 8), (4, s, 3, 8), (4, s, 3, 8))]


def _assert_matches_reference(fn, q, k, v, value_tol: float, seed: int):
  """fn(q, k, v) and its three gradients (random cotangent) within relative error of _reference's."""
  rel = lambda a, b: float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
  assert rel(jax.jit(fn)(q, k, v), _reference(q, k, v)) <= value_tol
  cotangent = jnp.asarray(np.random.default_rng(seed).normal(size=q.shape), jnp.float32)
  grads = [jax.jit(jax.grad(lambda q, k, v, f=f: jnp.sum(f(q, k, v) * cotangent), argnums=(0, 1, 2)))(q, k, v)
           for f in (fn, _reference)]
  for got, want in zip(*grads):
    assert rel(got, want) <= 1e-5


@pytest.mark.parametrize("t, s, score_bytes, plan", [
    (64, 64, 16 * 64 * 4, (1, 16)),           # blocks of 16 queries of one (batch, head) pair
    (64, 7, 3 * 64 * 7 * 4, (3, 64)),         # cross-attention to few keys: 3 pairs per block
    (40, 40, 20 * 40 * 4, (1, 20)),           # T = 40: blocks of 20
    (64, 64, 2 * 64 * 64 * 4, (2, 64)),       # all queries of 2 pairs
    (16, 16, 1 << 20, (12, 16))])             # a single block
def test_values_and_gradients_match_softmax_attention(t, s, score_bytes, plan, monkeypatch):
  monkeypatch.setattr(attention, "SCORE_BYTES", score_bytes)
  q, k, v = _inputs(t, s)
  assert attention.block_shape(q.shape[0] * q.shape[2], t, s) == plan
  _assert_matches_reference(attention.blocked_attention, q, k, v, value_tol=1e-6, seed=9)


def test_bfloat16_inputs_keep_their_dtype_and_stay_close():
  q, k, v = _inputs(64, 64)
  low = attention.blocked_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)))
  assert low.dtype == jnp.bfloat16
  assert float(jnp.linalg.norm(low.astype(jnp.float32) - _reference(q, k, v)) / jnp.linalg.norm(_reference(q, k, v))) < 2e-2


def test_blocks_keep_scores_within_budget(monkeypatch):
  monkeypatch.setattr(attention, "SCORE_BYTES", 4 << 20)
  assert attention.block_shape(64, 1024, 1024) == (1, 1024)   # one (batch, head) pair: 1024 * 1024 * 4 bytes
  assert attention.block_shape(64, 2048, 1024) == (1, 1024)   # too many queries for one block: halved
  assert attention.block_shape(64, 1024, 77) == (8, 1024)     # 8 pairs fit
  assert attention.block_shape(64, 256, 64) == (64, 256)      # everything fits: no loop
  assert attention.block_shape(48, 256, 256) == (16, 256)     # groups divide the pairs
  monkeypatch.setattr(attention, "SCORE_BYTES", 1)
  assert attention.block_shape(64, 24, 1024) == (1, 12)       # halving stops once at most 16 rows


@pytest.mark.parametrize("t, s", [(200, 200), (128, 77)])     # self-attention (q padded), cross-attention to 77 keys
def test_splash_attention_in_interpret_mode_matches_softmax_attention(t, s):
  """Pallas TPU splash attention run by the Pallas interpreter on the CPU: values and gradients."""
  q, k, v = (x[:2, :, :2] for x in _inputs(t, s, seed=4))
  splash = lambda q, k, v: attention.dot_product_attention(q, k, v, impl="splash")
  _assert_matches_reference(splash, q, k, v, value_tol=1e-5, seed=5)


def test_probs_saved_attention_matches_softmax_attention():
  """xla_probs (custom VJP keeping the unnormalised probabilities): float32 values and all three gradients, T != S."""
  q, k, v = _inputs(64, 40, seed=11)
  _assert_matches_reference(attention.probs_saved_attention, q, k, v, value_tol=1e-6, seed=12)


def test_probs_saved_attention_in_bfloat16_stays_close():
  """In bfloat16 its scores are rounded to bfloat16 before the softmax (jax.nn's stay float32): values and gradients
  within 2 % of the float32 formula and 2x the error of jax.nn.dot_product_attention's bfloat16 path (measured:
  1.0-1.4 % vs 0.65-0.87 %). xla_probs runs op by op, not jitted: XLA:CPU would carry its bfloat16 scores in float32
  (jax.nn's error is the same either way)."""
  q, k, v = _inputs(128, 128, seed=3)
  cotangent = jnp.asarray(np.random.default_rng(4).normal(size=q.shape), jnp.float32)
  rel = lambda a, b: float(jnp.linalg.norm(a.astype(jnp.float32) - b) / jnp.linalg.norm(b))

  def value_and_grads(fn, *args):
    out, vjp = jax.vjp(fn, *args)
    return (out, *vjp(cotangent.astype(out.dtype)))

  want = jax.jit(lambda *a: value_and_grads(_reference, *a))(q, k, v)
  low = [x.astype(jnp.bfloat16) for x in (q, k, v)]
  run = {"xla_probs": lambda f: f, "xla": jax.jit}
  errors = {impl: [rel(g, w) for g, w in zip(run[impl](lambda *a, i=impl: value_and_grads(
      lambda *b: attention.dot_product_attention(*b, impl=i), *a))(*low), want)] for impl in run}
  assert max(errors["xla_probs"]) < 2e-2, errors
  assert all(ours <= 2 * xla for ours, xla in zip(errors["xla_probs"], errors["xla"])), errors


def test_auto_attention_follows_the_backend():
  assert [attention.resolve_attention_impl("auto", b) for b in ("cpu", "tpu", "gpu")] == ["cpu_blocked", "xla_probs",
                                                                                           "xla"]
  assert attention.resolve_attention_impl("xla", "tpu") == "xla"


def test_unknown_attention_impl_is_named():
  with pytest.raises(ValueError, match="attention_impl 'flash'.*known"):
    attention.dot_product_attention(*_inputs(8, 8), impl="flash")


def _cpu(l2_kib: int | None, l3_kib: int | None, usable: int = 2, l3_shared_by: int = 8) -> host_cpu.HostCpu:
  caches = tuple(host_cpu.Cache(level, kib << 10, shared)
                 for level, kib, shared in ((2, l2_kib, 1), (3, l3_kib, l3_shared_by)) if kib is not None)
  return host_cpu.HostCpu("test", 8, usable, caches)


def test_score_budget_follows_the_caches():
  assert attention.score_bytes(_cpu(512, 32 << 10)) == 1 << 20     # AMD EPYC Zen 3: 2 x 512 KiB L2
  assert attention.score_bytes(_cpu(2 << 10, 260 << 10)) == 4 << 20  # Xeon with 2 MiB L2
  assert attention.score_bytes(_cpu(2 << 10, 4 << 10)) == 2 << 20   # small L3: a core's share (4 MiB / 2 usable)
  assert attention.score_bytes(_cpu(None, None)) == attention.FALLBACK_SCORE_BYTES


def test_host_cpu_reads_sysfs_cache_layout(tmp_path):
  for index, (level, kind, size, shared) in enumerate([(1, "Data", "32K", "0"), (1, "Instruction", "32K", "0"),
                                                       (2, "Unified", "2048K", "0-1"), (3, "Unified", "260M", "0-3,8")]):
    folder = tmp_path / f"index{index}"
    folder.mkdir()
    for name, text in (("level", level), ("type", kind), ("size", size), ("shared_cpu_list", shared)):
      (folder / name).write_text(f"{text}\n")
  cpu = host_cpu.describe(tmp_path)
  assert [(c.level, c.size_bytes, c.shared_by) for c in cpu.caches] == [(1, 32 << 10, 1), (2, 2 << 20, 2),
                                                                        (3, 260 << 20, 5)]
  assert attention.score_bytes(cpu) == min(2 * (2 << 20) // 2, (260 << 20) // min(5, cpu.usable_cpus))


def test_host_cpu_names_generation_simd_and_amx():
  cpuinfo = ("processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n"
             "model name\t: {name}\nflags\t\t: fpu sse2 avx avx2 {extra}\n\nprocessor\t: 1\nmodel name\t: other\n")
  intel = dict(vendor="GenuineIntel", family=6)
  amd = dict(vendor="AuthenticAMD", name="AMD EPYC")
  assert host_cpu.name_from_cpuinfo(cpuinfo.format(**intel, model=167, name="Intel(R) Xeon(R) Processor",
                                                   extra="avx512f amx_bf16 amx_tile")) == \
      "Intel(R) Xeon(R) Processor (family 6 model 167, AVX-512 + AMX)"
  assert host_cpu.name_from_cpuinfo(cpuinfo.format(**intel, model=85, name="Intel(R) Xeon(R) CPU @ 2.00GHz",
                                                   extra="avx512f")) == \
      "Intel(R) Xeon(R) CPU @ 2.00GHz (family 6 model 85, AVX-512)"
  assert host_cpu.name_from_cpuinfo(cpuinfo.format(**amd, family=25, model=1, extra="")) == \
      "AMD EPYC (family 25 model 1, AVX2)"
  assert host_cpu.name_from_cpuinfo(cpuinfo.format(**amd, family=26, model=2, extra="avx512f avx512_bf16")) == \
      "AMD EPYC (family 26 model 2, AVX-512)"
