"""The CPU kernel (lstm/native.py, lstm/kernels/lstm_cpu.cc) against the reference path and the
fast path's XLA loops: outputs, carries and gradients; which layers it takes; its build and its
fallbacks. Hidden sizes are multiples of 16 (the kernel's vector width); odd batch sizes and
several unit blocks per core exercise the kernel's remainders and its work sharing."""
import logging
import os
import platform
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm import LSTMCell, LSTMLayer, StackedLSTM, fast, native
from tests.test_fast import _assert_trees_close, _compare, _jit
from tests.trainer_utils import ROOT

T, F = 9, 6


@pytest.fixture
def kernel_calls(monkeypatch):
  """Counts the kernel's forward and backward calls while tracing."""
  calls = {'forward': 0, 'backward': 0}
  for name in calls:
    original = getattr(native, name)

    def counting(*args, _name=name, _original=original, **kwargs):
      calls[_name] += 1
      return _original(*args, **kwargs)

    monkeypatch.setattr(native, name, counting)
  return calls


def _x(batch, steps=T, features=F, seed=0):
  return jax.random.normal(jax.random.key(seed), (batch, steps, features))


def test_the_kernel_builds_here():
  assert native.available(), native._status


@pytest.mark.parametrize('batch, hidden, padded', [(5, 32, True), (8, 48, False), (1, 16, True),
                                                  (13, 80, True)])
def test_layer_matches_reference(kernel_calls, batch, hidden, padded):
  lengths = jax.random.randint(jax.random.key(4), (batch,), 0, T + 1) if padded else None
  model = StackedLSTM(hidden_size=hidden, num_layers=1)
  _compare(model, seq_lengths=lengths, x=_x(batch))
  assert kernel_calls['forward'] >= 1 and kernel_calls['backward'] >= 1


@pytest.mark.parametrize('kwargs', [
    dict(num_layers=3),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=2, between='layernorm', block='residual_op_on_skip'),
    dict(num_layers=2, remat=True),
    dict(num_layers=2, bidirectional=True, scan_layers=True),
])
def test_stack_matches_reference(kernel_calls, kwargs):
  lengths = jnp.array([T, 4, 0, 7])
  _compare(StackedLSTM(hidden_size=32, **kwargs), seq_lengths=lengths, x=_x(4))
  assert kernel_calls['backward'] >= 1


def test_kernel_matches_the_xla_loops_closely():
  """Same function, two implementations: float32 rounding apart, on a 64-unit layer."""
  model = StackedLSTM(hidden_size=64, num_layers=2)
  x = _x(16, steps=20, features=8)
  variables = model.init(jax.random.key(1), x)
  lengths = jnp.arange(16) + 5

  def loss(variables, x):
    y, _ = model.apply(variables, x, lengths)
    return jnp.sum(jnp.tanh(y) ** 2)

  got = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(variables, x)
  with native.disabled():
    want = jax.jit(jax.value_and_grad(lambda v, x: loss(v, x), argnums=(0, 1)))(variables, x)
  _assert_trees_close(got, want, tol=2e-6)


def test_results_do_not_depend_on_which_threads_join():
  """Helpers join a call whenever XLA's pool starts them, so each call may split its work
  differently; with two other threads keeping the pool busy, 200 calls of the forward and the
  backward return the same bits as the first."""
  steps, batch, features, hidden = 12, 5, 24, 48
  rng = np.random.default_rng(0)
  x, dy = (jnp.asarray(rng.standard_normal(s, np.float32))
           for s in ((steps, batch, features), (steps, batch, hidden)))
  kernel, w = (jnp.asarray(0.1 * rng.standard_normal(s, np.float32))
               for s in ((features, 4 * hidden), (hidden, 4 * hidden)))
  b, h0, c0 = (jnp.asarray(rng.standard_normal(s, np.float32))
               for s in ((4 * hidden,), (batch, hidden), (batch, hidden)))

  @jax.jit
  def both(x, kernel, w):
    gates, hs, cs = native.forward(x, kernel, w, b, h0, c0, None)
    return hs, cs, native.backward(gates, cs, c0, w, dy, h0, c0, None)

  first = [np.asarray(a) for a in jax.tree.leaves(both(x, kernel, w))]
  stop = threading.Event()

  def keep_the_pool_busy():
    a = jnp.ones((256, 256))
    while not stop.is_set():
      (a @ a).block_until_ready()

  others = [threading.Thread(target=keep_the_pool_busy) for _ in range(2)]
  for t in others:
    t.start()
  try:
    for _ in range(200):
      for got, want in zip(jax.tree.leaves(both(x, kernel, w)), first):
        np.testing.assert_array_equal(got, want)
  finally:
    stop.set()
    for t in others:
      t.join()


def test_inference_does_not_keep_the_gates(kernel_calls):
  model = StackedLSTM(hidden_size=32, num_layers=1)
  x = _x(4)
  variables = model.init(jax.random.key(1), x)
  kernel_calls['forward'] = 0
  text = jax.jit(model.apply).lower(variables, x).as_text()
  assert kernel_calls == {'forward': 1, 'backward': 0}
  assert 'stacked_lstm_forward' in text and 'tensor<0xf32>' in text


@pytest.mark.parametrize('cell_kwargs, uses_kernel', [
    ({}, True),
    ({'hidden_size': 40}, False),  # not a multiple of 16
    ({'coupled_gates': True}, False),
    ({'activation': 'relu'}, False),
    ({'recurrent_activation': 'hard_sigmoid'}, False),
    ({'dtype': jnp.bfloat16, 'param_dtype': jnp.bfloat16}, False),
])
def test_which_layers_take_the_kernel(kernel_calls, fast_calls, cell_kwargs, uses_kernel):
  kwargs = {'hidden_size': 32, **cell_kwargs}
  layer = LSTMLayer(LSTMCell(kwargs.pop('hidden_size'), **kwargs))
  x = _x(3)
  variables = jax.eval_shape(layer.init, jax.random.key(0), x)
  fast_calls.clear()
  kernel_calls.update(forward=0, backward=0)
  jax.eval_shape(jax.grad(lambda v: jnp.sum(layer.apply(v, x)[0])), variables)
  assert fast_calls, 'the fast path was not taken at all'
  assert kernel_calls == ({'forward': 1, 'backward': 1} if uses_kernel
                          else {'forward': 0, 'backward': 0})


def test_resets_and_recurrent_dropout_keep_the_xla_loops(kernel_calls, fast_calls):
  layer = LSTMLayer(LSTMCell(32))
  dropped = LSTMLayer(LSTMCell(32, recurrent_dropout=0.2))
  x = _x(4)
  starts = jnp.zeros((4, T), bool).at[:, 3].set(True)
  variables = jax.eval_shape(layer.init, jax.random.key(0), x)
  fast_calls.clear()
  kernel_calls.update(forward=0, backward=0)
  jax.eval_shape(lambda v: layer.apply(v, x, segment_starts=starts), variables)
  jax.eval_shape(lambda v: dropped.apply(v, x, deterministic=False,
                                         rngs={'dropout': jax.random.key(2)}), variables)
  assert len(fast_calls) == 2 and kernel_calls['forward'] == 0


def test_disabled_and_the_environment_switch_keep_the_xla_loops(kernel_calls, monkeypatch):
  model = StackedLSTM(hidden_size=32, num_layers=1)
  x = _x(2)
  with native.disabled():
    variables = model.init(jax.random.key(1), x)
    jax.jit(lambda v, x: model.apply(v, x))(variables, x)
  monkeypatch.setenv(native.ENV, '0')
  jax.jit(lambda v, x: model.apply(v, x))(variables, x)
  assert kernel_calls['forward'] == 0
  monkeypatch.delenv(native.ENV)
  jax.jit(lambda v, x: model.apply(v, x))(variables, x)
  assert kernel_calls['forward'] == 1


def test_vmap_runs_the_kernel_per_member():
  model = StackedLSTM(hidden_size=16, num_layers=1)
  xs = jax.random.normal(jax.random.key(0), (3, 2, T, F))
  variables = jax.vmap(lambda k: model.init(k, xs[0]))(jax.random.split(jax.random.key(1), 3))
  got = jax.jit(jax.vmap(lambda v, x: model.apply(v, x)[0]))(variables, xs)
  with fast.reference_path():
    want = jnp.stack([model.apply(jax.tree.map(lambda a: a[i], variables), xs[i])[0]
                      for i in range(3)])
  _assert_trees_close(got, want)


def test_the_build_is_cached_per_source_and_cpu():
  path = native._build()
  mtime = os.path.getmtime(path)
  assert native._build() == path and os.path.getmtime(path) == mtime
  assert os.path.dirname(path).startswith(os.environ['STACKED_LSTM_CACHE'])


def test_without_a_compiler_the_xla_loops_run(monkeypatch, tmp_path, caplog, kernel_calls):
  monkeypatch.setattr(native, '_status', {})
  monkeypatch.setenv('CXX', str(tmp_path / 'no-such-compiler'))
  monkeypatch.setenv('STACKED_LSTM_CACHE', str(tmp_path / 'cache'))
  model = StackedLSTM(hidden_size=32, num_layers=1)
  x = _x(2)
  variables = model.init(jax.random.key(1), x)
  with caplog.at_level(logging.WARNING):
    y, _ = jax.jit(lambda v, x: model.apply(v, x))(variables, x)
  assert kernel_calls['forward'] == 0 and not native.available()
  assert any('CPU kernel is not available' in r.getMessage() for r in caplog.records)
  with fast.reference_path():
    want, _ = jax.jit(lambda v, x: model.apply(v, x))(variables, x)
  np.testing.assert_allclose(y, want, atol=1e-5)


_TARGET_PROGRAM = '''
import logging, os, sys
import jax, jax.numpy as jnp, numpy as np
from lstm import StackedLSTM, fast, native
native.TARGET = sys.argv[1]
calls = {'forward': 0, 'backward': 0}
for name in calls:
  def counting(*args, _name=name, _original=getattr(native, name), **kwargs):
    calls[_name] += 1
    return _original(*args, **kwargs)
  setattr(native, name, counting)
model = StackedLSTM(hidden_size=32, num_layers=2)
x = jax.random.normal(jax.random.key(0), (3, 9, 6))
variables = model.init(jax.random.key(1), x)
loss = lambda v, x: jnp.sum(jnp.tanh(model.apply(v, x)[0]) ** 2)
got = jax.jit(jax.value_and_grad(loss))(variables, x)
with fast.reference_path():
  want = jax.jit(jax.value_and_grad(lambda v, x: loss(v, x)))(variables, x)
for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
  np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
built = os.listdir(os.path.join(os.environ['STACKED_LSTM_CACHE'], 'native'))
print(native.available(), calls['forward'] > 0, calls['backward'] > 0, len(built))
'''


@pytest.mark.slow  # builds the kernel in a process per target
@pytest.mark.skipif(platform.machine() != 'x86_64', reason='x86-64 target flags')
@pytest.mark.parametrize('target, used', [('-march=x86-64-v3', True), ('-march=x86-64', False)])
def test_builds_for_avx2_are_used_and_for_older_targets_not(tmp_path, target, used):
  """Built for AVX2 with FMA (x86-64-v3, as on a CPU without AVX-512) the kernel runs, in 8-float
  vectors, and matches the reference in value and gradient; built for x86-64's baseline it is
  left unused, with a warning. (A process of its own: a process registers one build.)"""
  env = dict(os.environ, STACKED_LSTM_CACHE=str(tmp_path / 'cache'), JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', _TARGET_PROGRAM, target], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == [str(used)] * 3 + ['1']
  assert ('neither AVX-512 nor AVX2' in out.stderr) == (not used)


_DEVICES_PROGRAM = '''
import jax, jax.numpy as jnp, numpy as np
from lstm import StackedLSTM, fast, native
assert native.available() and jax.device_count() == 4
model = StackedLSTM(hidden_size=64, num_layers=2)
xs = jax.random.normal(jax.random.key(0), (4, 8, 12, 5))
variables = model.init(jax.random.key(1), xs[0])
loss = lambda v, x: jnp.sum(model.apply(v, x)[0] ** 2)
got = jax.pmap(jax.grad(loss), in_axes=(None, 0))(variables, xs)
with fast.reference_path():
  want = jax.vmap(jax.grad(lambda v, x: loss(v, x)), in_axes=(None, 0))(variables, xs)
for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
  np.testing.assert_allclose(g, w, atol=1e-4 * max(1.0, float(np.abs(w).max())))
print('ok')
'''


@pytest.mark.slow  # a process with several CPU devices
def test_kernels_on_several_cpu_devices_match_the_reference():
  """Four CPU devices (pmap) run their kernel calls side by side on one machine's cores; the
  gradients equal the reference path's."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', _DEVICES_PROGRAM], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and out.stdout.strip().endswith('ok'), out.stderr[-2000:]
