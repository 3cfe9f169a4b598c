"""Corrections to XLA:TPU's cost model (transformer/hlo_cost.py): HBM bytes counted by hand,
the -1 s per unmodeled custom call, and loops."""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import SingleDeviceSharding

from transformer import aot, hlo_cost, tpu_slices

MIB = 2**20
# A hand-written program: a 1 MiB prefetch into alternate memory (S(3)), a ConcatBitcast there,
# a fusion reading a 2 MiB HBM operand and the prefetched copy, writing 2 MiB to HBM, inside a
# loop of 3 iterations; the entry writes the 2 MiB result back.
HAND_WRITTEN = """HloModule hand

%fused (p0: f32[512,1024], p1: f32[512,512]) -> f32[512,1024] {
  %p0 = f32[512,1024]{1,0:T(8,128)} parameter(0)
  %p1 = f32[512,512]{1,0:T(8,128)S(3)} parameter(1)
  ROOT %r = f32[512,1024]{1,0:T(8,128)} add(%p0, %p0)
}

%body (t: (s32[], f32[512,1024], f32[512,512])) -> (s32[], f32[512,1024], f32[512,512]) {
  %t = (s32[]{:T(128)}, f32[512,1024]{1,0:T(8,128)}, f32[512,512]{1,0:T(8,128)}) parameter(0)
  %i = s32[]{:T(128)} get-tuple-element(%t), index=0
  %x = f32[512,1024]{1,0:T(8,128)} get-tuple-element(%t), index=1
  %w = f32[512,512]{1,0:T(8,128)} get-tuple-element(%t), index=2
  %cs = (f32[512,512]{1,0:T(8,128)S(3)}, f32[512,512]{1,0:T(8,128)}, u32[]{:S(2)}) copy-start(%w)
  %cd = f32[512,512]{1,0:T(8,128)S(3)} copy-done(%cs)
  %cb = f32[512,512]{1,0:T(8,128)S(3)} custom-call(%cd), custom_call_target="ConcatBitcast"
  %y = f32[512,1024]{1,0:T(8,128)} fusion(%x, %cb), kind=kLoop, calls=%fused
  ROOT %o = (s32[]{:T(128)}, f32[512,1024]{1,0:T(8,128)}, f32[512,512]{1,0:T(8,128)}) tuple(%i, %y, %w)
}

%cond (t: (s32[], f32[512,1024], f32[512,512])) -> pred[] {
  %t = (s32[]{:T(128)}, f32[512,1024]{1,0:T(8,128)}, f32[512,512]{1,0:T(8,128)}) parameter(0)
  %n = s32[]{:T(128)} constant(3)
  %i = s32[]{:T(128)} get-tuple-element(%t), index=0
  ROOT %lt = pred[]{:T(512)} compare(%i, %n), direction=LT
}

ENTRY %main (x: f32[512,1024], w: f32[512,512]) -> f32[512,1024] {
  %x = f32[512,1024]{1,0:T(8,128)} parameter(0)
  %w = f32[512,512]{1,0:T(8,128)} parameter(1)
  %zero = s32[]{:T(128)} constant(0)
  %init = (s32[]{:T(128)}, f32[512,1024]{1,0:T(8,128)}, f32[512,512]{1,0:T(8,128)}) tuple(%zero, %x, %w)
  %loop = (s32[]{:T(128)}, f32[512,1024]{1,0:T(8,128)}, f32[512,512]{1,0:T(8,128)}) while(%init), condition=%cond, body=%body
  %res = f32[512,1024]{1,0:T(8,128)} get-tuple-element(%loop), index=1
  ROOT %out = f32[512,1024]{1,0:T(8,128)} copy(%res)
}
"""


def test_hand_written_program():
  # Per iteration: the prefetch reads 1 MiB once; the fusion reads x (2 MiB) and writes y
  # (2 MiB); the ConcatBitcast and the prefetched operand stay in alternate memory. Then the
  # final copy reads and writes 2 MiB.
  program = hlo_cost.parse(HAND_WRITTEN)
  assert hlo_cost.while_loops(program) == [3]
  assert hlo_cost.hbm_bytes(program) == 3 * (1 + 2 + 2) * MIB + 2 * 2 * MIB
  # XLA charges the ConcatBitcast's -1 s once: it counts the loop body once.
  assert hlo_cost.unmodeled_custom_calls(program) == 1
  assert hlo_cost.corrected_optimal_seconds(-0.99, program) == pytest.approx(0.01)


def test_an_in_place_update_moves_only_its_update():
  program = """ENTRY %main (cache: f32[64,1024], row: f32[1,1024], i: s32[]) -> f32[64,1024] {
  %cache = f32[64,1024]{1,0:T(8,128)} parameter(0)
  %row = f32[1,1024]{1,0:T(1,128)} parameter(1)
  %i = s32[]{:T(128)} parameter(2)
  %zero = s32[]{:T(128)} constant(0)
  ROOT %out = f32[64,1024]{1,0:T(8,128)} dynamic-update-slice(%cache, %row, %i, %zero)
}
"""
  # Reads the 4 KiB row and writes it into the cache; the 256 KiB cache is not copied.
  assert hlo_cost.hbm_bytes(hlo_cost.parse(program)) == 2 * 4096


def test_tiling_pads_the_minor_dimensions():
  # Tile (8, 128): the most minor dimension (first in minor-to-major order) rounds up to 128.
  assert hlo_cost.arrays("f32[512,64]{1,0:T(8,128)}") == [hlo_cost.Array(512 * 128 * 4, True)]
  assert hlo_cost.arrays("f32[60,64]{0,1:T(8,128)}") == [hlo_cost.Array(128 * 64 * 4, True)]
  assert hlo_cost.arrays("(bf16[3]{0:T(128)S(1)}, s32[])") == [hlo_cost.Array(128 * 2, False),
                                                              hlo_cost.Array(4, True)]


def _compile_for_v4(function, *shapes):
  device = aot.slice_devices(tpu_slices.get_slice("v4-8"))[0]
  arguments = [jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                           sharding=SingleDeviceSharding(device)),
                            shape) for shape in shapes]
  compiled = jax.jit(function).lower(*arguments).compile()
  return compiled, compiled.cost_analysis(), hlo_cost.parse(compiled.as_text())


def matmul_chain(layers):
  def chain(x, weights):
    for weight in weights:
      x = jnp.tanh(x @ weight)
    return x
  return _compile_for_v4(chain, jax.ShapeDtypeStruct((1024, 512), jnp.float32),
                         [jax.ShapeDtypeStruct((512, 512), jnp.float32)] * layers)


def test_compiled_chain_traffic_is_inputs_and_outputs_only():
  """Eight tanh(x @ w) layers compiled for a TPU v4: intermediates stay on chip, so HBM traffic
  is the input (2 MiB), eight weights (1 MiB each) and the output (2 MiB), once each. XLA's own
  count is far higher (every prefetch several times, alternate memory included)."""
  compiled, cost, program = matmul_chain(8)
  assert hlo_cost.hbm_bytes(program) == (2 + 8 + 2) * MIB
  assert cost["bytes accessed"] > 2 * hlo_cost.hbm_bytes(program)
  chip = tpu_slices.CHIPS["v4"]
  seconds = hlo_cost.corrected_optimal_seconds(cost["optimal_seconds"], program)
  assert cost["optimal_seconds"] < 0 < seconds < 1e-3
  assert seconds >= aot.roofline_seconds(2 * 1024 * 512 * 512 * 8, 12 * MIB, chip)


def test_corrected_time_grows_with_the_work():
  """If the correction were not exactly 1 s per unmodeled call, the corrected times of 8 and 16
  layers would be off by whole seconds, not in the ratio of their work."""
  times = {}
  for layers in (8, 16):
    _, cost, program = matmul_chain(layers)
    assert hlo_cost.unmodeled_custom_calls(program) > 0
    times[layers] = hlo_cost.corrected_optimal_seconds(cost["optimal_seconds"], program)
  assert 1.5 <= times[16] / times[8] <= 2.5


def test_xla_counts_a_loop_body_once_and_hbm_bytes_counts_every_trip():
  def unrolled(x, w):
    for i in range(8):
      x = jnp.tanh(x @ w[i])
    return x

  def looped(x, w):
    return jax.lax.fori_loop(0, 8, lambda i, x: jnp.tanh(x @ w[i]), x)

  shapes = (jax.ShapeDtypeStruct((2048, 2048), jnp.bfloat16),
            jax.ShapeDtypeStruct((8, 2048, 2048), jnp.bfloat16))
  _, unrolled_cost, unrolled_program = _compile_for_v4(unrolled, *shapes)
  _, looped_cost, looped_program = _compile_for_v4(looped, *shapes)
  assert looped_cost["flops"] == pytest.approx(unrolled_cost["flops"] / 8, rel=0.01)
  assert hlo_cost.while_loops(looped_program) == [8]
  assert hlo_cost.while_loops(unrolled_program) == []
  # x in and out (8 MiB each) and each iteration's 8 MiB slice of w, read once (plus a few
  # bytes of the loop counter).
  assert hlo_cost.hbm_bytes(looped_program) == pytest.approx((8 + 8 + 8 * 8) * MIB, abs=1024)
