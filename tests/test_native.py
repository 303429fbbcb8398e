"""The CPU kernel (lstm/native.py, lstm/kernels/lstm_cpu.cc) against the reference path and the
fast path's XLA loops: outputs, carries and gradients; which layers it takes; its build and its
fallbacks. Hidden sizes are multiples of 16 (the kernel's vector width); odd batch sizes and
several unit blocks per core exercise the kernel's remainders and its work sharing."""
import hashlib
import json
import logging
import os
import platform
import shutil
import stat
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm import LSTMCell, LSTMLayer, StackedLSTM, cache, fast, native
from tests.test_fast import _assert_trees_close, _compare
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


@pytest.mark.parametrize('batch, hidden, padded', [
    (5, 32, True), (8, 48, False), pytest.param(1, 16, True, marks=pytest.mark.slow),
    pytest.param(13, 80, True, marks=pytest.mark.slow)])
def test_layer_matches_reference(kernel_calls, batch, hidden, padded):
  lengths = jax.random.randint(jax.random.key(4), (batch,), 0, T + 1) if padded else None
  model = StackedLSTM(hidden_size=hidden, num_layers=1)
  _compare(model, seq_lengths=lengths, x=_x(batch))
  assert kernel_calls['forward'] >= 1 and kernel_calls['backward'] >= 1


@pytest.mark.parametrize('kwargs', [
    dict(num_layers=3),
    dict(num_layers=2, bidirectional=True),
    pytest.param(dict(num_layers=2, between='layernorm', block='residual_op_on_skip'),
                 marks=pytest.mark.slow),
    pytest.param(dict(num_layers=2, remat=True), marks=pytest.mark.slow),
    pytest.param(dict(num_layers=2, bidirectional=True, scan_layers=True), marks=pytest.mark.slow),
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
  warnings = [r for r in caplog.records if 'CPU kernel is not available' in r.getMessage()]
  assert len(warnings) == 1 and warnings[0].name == 'lstm.native'  # once, the library's logger
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
built = [f for f in os.listdir(os.path.join(os.environ['STACKED_LSTM_CACHE'], 'native'))
         if f.endswith('.so')]
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


# ----------------------------------------------------------------------------------------------
# First use: what is built is said through the library's logger; damaged, slow or exposed builds


def _fake_compiler(tmp_path, action: str) -> str:
  """A `$CXX` that answers --version, logs each compile to `compiles` and runs `action` with
  $out set to the file after -o."""
  script = tmp_path / 'fake-c++'
  script.write_text(f"""#!/bin/sh
case "$1" in --version) echo "fake c++ 1.0"; exit 0;; esac
out=""
prev=""
for arg in "$@"; do [ "$prev" = "-o" ] && out="$arg"; prev="$arg"; done
echo compile >> {tmp_path}/compiles
{action}
""")
  script.chmod(0o755)
  return str(script)


def _compiles(tmp_path) -> int:
  log = tmp_path / 'compiles'
  return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.fixture
def fresh_build(tmp_path, monkeypatch):
  """A cache directory of its own and no kernel loaded yet in this process's bookkeeping;
  `tmp_path / 'real.so'` is a copy of the kernel built in the session's cache."""
  shutil.copy(native._build(), tmp_path / 'real.so')
  monkeypatch.setattr(native, '_status', {})
  monkeypatch.setenv(cache.ENV, str(tmp_path / 'cache'))
  return tmp_path


def test_the_build_is_said_what_how_long_where_and_recorded(fresh_build, monkeypatch, caplog):
  real = fresh_build / 'real.so'
  monkeypatch.setenv('CXX', _fake_compiler(fresh_build, f'cp {real} "$out"'))
  with caplog.at_level(logging.INFO, logger='lstm.native'):
    path = native._build()
  said = [r.getMessage() for r in caplog.records if r.name == 'lstm.native']
  assert len(said) == 2 and said[0].startswith('building the CPU kernel with')
  assert said[1].startswith('built the CPU kernel in ') and path in said[1]
  with open(path + '.json') as f:
    record = json.load(f)
  with open(path, 'rb') as f:
    data = f.read()
  assert record == {'size': len(data), 'sha256': hashlib.sha256(data).hexdigest()}
  assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
  caplog.clear()
  with caplog.at_level(logging.INFO, logger='lstm.native'):
    assert native._build() == path
  assert _compiles(fresh_build) == 1 and not caplog.records  # cached: built and said once


def test_a_damaged_kernel_is_set_aside_and_built_again(fresh_build, monkeypatch, caplog):
  real = fresh_build / 'real.so'
  monkeypatch.setenv('CXX', _fake_compiler(fresh_build, f'cp {real} "$out"'))
  path = native._build()
  with open(path, 'r+b') as f:
    f.truncate(1000)
  with caplog.at_level(logging.WARNING, logger='lstm.native'):
    assert native._build() == path
  assert _compiles(fresh_build) == 2
  assert os.path.getsize(path) == os.path.getsize(real)
  assert os.path.getsize(path + '.damaged') == 1000  # set aside, not deleted
  [warning] = caplog.records
  assert 'does not match its build record' in warning.getMessage()
  assert native._build() == path and _compiles(fresh_build) == 2


def test_a_compiler_that_does_not_finish_is_stopped(fresh_build, monkeypatch, caplog):
  pid_file = fresh_build / 'pid'
  monkeypatch.setenv('CXX', _fake_compiler(fresh_build, f'sleep 300 & echo $! > {pid_file}; wait'))
  monkeypatch.setenv(native.TIMEOUT_ENV, '2')
  with caplog.at_level(logging.WARNING, logger='lstm.native'):
    assert not native.usable(jnp.float32, 32, True, True)
    assert not native.available()
  [warning] = caplog.records
  assert 'did not finish within 2 s and was stopped' in warning.getMessage()
  assert native.TIMEOUT_ENV in warning.getMessage()
  pid = int(pid_file.read_text())
  assert _stopped(pid)  # the compiler's own children are stopped with it


def _stopped(pid: int) -> bool:
  """Whether process `pid` is gone, a zombie, or another process (the pid reused); a process
  being killed may take a moment to exit on a busy machine."""
  for _ in range(100):
    try:
      with open(f'/proc/{pid}/stat') as f:
        state = f.read().split(') ')[1][0]
      with open(f'/proc/{pid}/cmdline') as f:
        command = f.read().split('\0')[:2]
    except FileNotFoundError:
      return True
    if state in 'ZX' or command != ['sleep', '300']:
      return True
    time.sleep(0.1)
  return False


@pytest.mark.parametrize('exposed', ['directory', 'file'])
def test_a_kernel_others_can_write_is_not_loaded(fresh_build, monkeypatch, caplog, exposed):
  real = fresh_build / 'real.so'
  monkeypatch.setenv('CXX', _fake_compiler(fresh_build, f'cp {real} "$out"'))
  path = native._build()
  os.chmod(os.path.dirname(path) if exposed == 'directory' else path,
           0o775 if exposed == 'directory' else 0o664)
  with caplog.at_level(logging.WARNING, logger='lstm.native'):
    assert not native.available()
  [warning] = caplog.records
  assert 'writable by other users' in warning.getMessage()
  assert (os.path.dirname(path) if exposed == 'directory' else path) in warning.getMessage()


_ROOT_LOGGER_PROGRAM = '''
import logging
import jax, jax.numpy as jnp
from lstm import StackedLSTM
model = StackedLSTM(hidden_size=32, num_layers=1)
x = jnp.ones((2, 3, 4))
model.apply(model.init(jax.random.key(0), x), x)
print(len(logging.getLogger().handlers))
'''


def test_without_a_compiler_the_root_logger_is_left_alone(tmp_path):
  """The warning goes through the `lstm.native` logger, so a user's later
  `logging.basicConfig` still configures logging (no handler was put on the root logger)."""
  env = dict(os.environ, CXX=str(tmp_path / 'no-such-compiler'), JAX_PLATFORMS='cpu',
             STACKED_LSTM_CACHE=str(tmp_path / 'cache'))
  out = subprocess.run([sys.executable, '-c', _ROOT_LOGGER_PROGRAM], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ['0']
  assert out.stderr.count('the CPU kernel is not available') == 1
