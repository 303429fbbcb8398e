"""bfloat16 layers on the CPU kernel (the bfloat16 calls of lstm/kernels/lstm_cpu.cc, chosen by
lstm/native.py) against the reference path and against float32: outputs, carries and gradients;
which CPUs run them (AVX512-BF16) and which keep the XLA loops. Odd input widths and batch sizes
exercise the kernel's pairs of rows and its row remainders."""
import os
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm import LSTMCell, LSTMLayer, StackedLSTM, fast, native
from tests.test_fast import _assert_trees_close, _initial_carry, _jit
from tests.test_native import kernel_calls  # noqa: F401 (a fixture)
from tests.trainer_utils import ROOT

T = 8

needs_bf16 = pytest.mark.skipif(
    not native.cpu_has_bf16(),
    reason="this CPU lacks AVX512-BF16, the instructions of the kernel's bfloat16 calls")

# Tolerances, as a fraction of each result's scale (its largest magnitude, at least 1), as
# `_assert_trees_close` measures. bfloat16 keeps 8 significant bits: its unit in the last place at
# the scale is 2^-8, and every value stored in it (inputs, weights, h, c, the gates, dz) is within
# half of that of its float32 value. Against float32 on the same bfloat16-rounded inputs and
# weights, these roundings over T=8 steps and up to 2 layers moved the kernel's outputs and
# gradients by at most 0.0099 (2.5 units): TO_FLOAT32 allows 4. The reference path computes in
# bfloat16 throughout (each matmul and each op of the cell rounded) and was up to 0.018 (4.7
# units) from float32, so the kernel and the reference are held within TO_REFERENCE, 8 units.
TO_FLOAT32 = 2 ** -6
TO_REFERENCE = 2 ** -5


def _bfloat16_values(tree):
  return jax.tree.map(lambda a: a.astype(jnp.bfloat16).astype(a.dtype), tree)


def _results(model, variables, x, lengths, carry, weights):
  """`model`'s outputs and final carries, and the gradients of a loss of both with respect to
  the parameters, the input and the initial carry."""

  def loss(variables, x, carry):
    y, final = model.apply(variables, x, lengths, carry)
    return jnp.sum(y * weights) + sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves(final))

  return (model.apply(variables, x, lengths, carry),
          jax.grad(loss, argnums=(0, 1, 2))(variables, x, carry))


@needs_bf16
@pytest.mark.parametrize('kwargs, batch, features, padded', [
    (dict(num_layers=1, hidden_size=32), 5, 5, True),
    pytest.param(dict(num_layers=1, hidden_size=48), 8, 6, False, marks=pytest.mark.slow),
    pytest.param(dict(num_layers=2, hidden_size=64), 4, 7, True, marks=pytest.mark.slow),
    pytest.param(dict(num_layers=2, hidden_size=16, bidirectional=True), 3, 4, True,
                 marks=pytest.mark.slow),
])
def test_bfloat16_on_the_kernel_matches_the_reference_and_float32(kernel_calls, kwargs, batch,
                                                                   features, padded):
  model = StackedLSTM(dtype=jnp.bfloat16, **kwargs)
  x = _bfloat16_values(jax.random.normal(jax.random.key(0), (batch, T, features)))
  lengths = jnp.arange(batch) * 3 % (T + 1) if padded else None
  variables = _bfloat16_values(_jit(model.init)(jax.random.key(1), x))
  carry = _initial_carry(model, jax.random.key(2), batch)
  weights = jax.random.normal(jax.random.key(3), jax.eval_shape(
      lambda: model.apply(variables, x, lengths)[0]).shape)
  inputs = (variables, x, lengths, carry, weights)
  got = _jit(lambda *a: _results(model, *a))(*inputs)
  assert kernel_calls['forward'] >= 1 and kernel_calls['backward'] >= 1
  assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(got[0]))
  with fast.reference_path():
    want = _jit(lambda *a: _results(model, *a))(*inputs)
    in_float32 = model.clone(dtype=jnp.float32)
    carry32 = jax.tree.map(lambda a: a.astype(jnp.float32), carry)
    float32 = _jit(lambda *a: _results(in_float32, *a))(variables, x, lengths, carry32, weights)
  _assert_trees_close(got, want, tol=TO_REFERENCE)
  _assert_trees_close(got, float32, tol=TO_FLOAT32)


@needs_bf16
def test_bfloat16_layers_take_the_kernels_bfloat16_calls_here(kernel_calls, fast_calls):
  layer = LSTMLayer(LSTMCell(32, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16))
  x = jnp.ones((3, T, 6), jnp.bfloat16)
  variables = jax.eval_shape(layer.init, jax.random.key(0), x)
  fast_calls.clear()
  kernel_calls.update(forward=0, backward=0)
  text = jax.jit(jax.grad(lambda v: jnp.sum(layer.apply(v, x)[0]))).lower(variables).as_text()
  assert fast_calls and kernel_calls == {'forward': 1, 'backward': 1}
  assert 'stacked_lstm_forward_bf16' in text and 'stacked_lstm_backward_bf16' in text
  inference = jax.jit(layer.apply).lower(variables, x).as_text()
  assert 'stacked_lstm_forward_bf16' in inference and 'tensor<0xbf16>' in inference


def test_without_avx512_bf16_bfloat16_keeps_the_xla_loops(monkeypatch, kernel_calls, fast_calls):
  """On a CPU without the instructions (simulated) bfloat16 layers run the XLA loops, bit for bit
  what `native.disabled()` runs, while float32 layers keep the kernel."""
  monkeypatch.setattr(native, 'cpu_has_bf16', lambda: False)
  assert not native.bf16_available()
  model = StackedLSTM(num_layers=1, hidden_size=32, dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(0), (3, T, 6))
  variables = _jit(model.init)(jax.random.key(1), x)
  loss = lambda v, x: jnp.sum(model.apply(v, x)[0].astype(jnp.float32) ** 2)
  fast_calls.clear()
  kernel_calls.update(forward=0, backward=0)
  step = jax.jit(jax.value_and_grad(loss))
  assert 'stacked_lstm' not in step.lower(variables, x).as_text()
  got = step(variables, x)
  assert fast_calls and kernel_calls == {'forward': 0, 'backward': 0}
  with native.disabled():
    want = jax.jit(jax.value_and_grad(lambda v, x: loss(v, x)))(variables, x)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(g, w)
  in_float32 = model.clone(dtype=jnp.float32)
  jax.eval_shape(lambda v: in_float32.apply(v, x), variables)
  assert kernel_calls['forward'] == 1


_BUILD_PROGRAM = '''
import sys
import jax, jax.numpy as jnp, numpy as np
from lstm import StackedLSTM, fast, native
native.TARGET = sys.argv[1]
x = jax.random.normal(jax.random.key(0), (3, 6, 5))
for dtype in (jnp.float32, jnp.bfloat16):
  model = StackedLSTM(hidden_size=32, num_layers=1, dtype=dtype)
  variables = model.init(jax.random.key(1), x)
  text = jax.jit(lambda v, x: model.apply(v, x)).lower(variables, x).as_text()
  got = np.asarray(jax.jit(lambda v, x: model.apply(v, x)[0])(variables, x), np.float32)
  with fast.reference_path():
    want = np.asarray(jax.jit(lambda v, x: model.apply(v, x)[0])(variables, x), np.float32)
  np.testing.assert_allclose(got, want, atol=2e-2 if dtype == jnp.bfloat16 else 1e-5)
  print('stacked_lstm_forward' in text, end=' ')
print(native.cpu_has_bf16(), native.bf16_available())
'''


@pytest.mark.slow  # builds the kernel in a process of its own
@pytest.mark.skipif(platform.machine() != 'x86_64' or not native.cpu_has_bf16(),
                    reason='an AVX-512 build without BF16, run on a CPU that has AVX512-BF16')
def test_a_build_without_avx512_bf16_leaves_bfloat16_on_the_xla_loops(tmp_path):
  """Built for AVX-512 without BF16 (x86-64-v4; as by a compiler that does not know the CPU's
  BF16), the kernel runs float32 layers and leaves bfloat16 ones to the XLA loops, although the
  CPU has the instructions. (A process of its own: a process registers one build.)"""
  env = dict(os.environ, STACKED_LSTM_CACHE=str(tmp_path / 'cache'), JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', _BUILD_PROGRAM, '-march=x86-64-v4'], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ['True', 'False', 'True', 'False']
