"""The CPU kernel of one canonical LSTM layer's time loop (lstm/kernels/lstm_cpu.cc), as XLA FFI calls.

`lstm.fast` runs a layer's recurrence here, forward and backward, when `usable(...)` holds: a
float32 layer on the CPU with tanh/sigmoid gates and H a multiple of 16, without resets, recurrent
dropout or coupled gates. The kernel is compiled on first use with the machine's C++ compiler
(`$CXX`, else g++; `-O3 -march=native` against the XLA FFI headers jaxlib ships) into the cache
directory (`lstm.cache`), keyed by its source, the compiler, jaxlib and the CPU, and loaded from
there afterwards. The kernel is written for AVX-512 (16-float vectors) and AVX2 with FMA (8-float
vectors, smaller register tiles), and is used only where the build targets one of them. Where no
compiler works, the CPU has neither, `STACKED_LSTM_NATIVE=0` is set, or inside `disabled()`,
`lstm.fast` keeps its XLA loops (a warning says why, once).

    forward(x, kernel, w, b, h0, c0, mask)  -> gates, hs, cs
    backward(gates, cs, c0, w, dy, dh_last, dc_last, mask) -> dz, dh0, dc0
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from typing import Optional

import jax
import jax.numpy as jnp

from lstm import cache, switches

ENV = 'STACKED_LSTM_NATIVE'
TARGET = '-march=native'  # the compiler's target CPU
LANES = 16  # H must be a multiple of the kernel's widest vector, in floats
SOURCE = os.path.join(os.path.dirname(__file__), 'kernels', 'lstm_cpu.cc')
_TARGETS = {'forward': 'stacked_lstm_forward', 'backward': 'stacked_lstm_backward'}

_lock = threading.Lock()
_status: dict = {}  # 'ok' -> bool, 'why' -> str


_off = switches.Switch()


def disabled(off: bool = True):
  """Within this context, layers traced use `lstm.fast`'s XLA loops (tests, benchmarks)."""
  return _off.set(off)


def usable(dtype, hidden: int, closed_form: bool, plain: bool) -> bool:
  """Whether `lstm.fast` may run a layer's loop here: float32 on CPU, tanh/sigmoid gates
  (`closed_form`), H a multiple of LANES, and `plain` (no resets, recurrent dropout or CIFG)."""
  if _off.on() or os.environ.get(ENV, '1') == '0':
    return False
  if not (closed_form and plain and jnp.dtype(dtype) == jnp.float32 and hidden % LANES == 0):
    return False
  if jax.default_backend() != 'cpu':
    return False
  return available()


def available() -> bool:
  """Whether the kernel is built and registered (builds it on the first call)."""
  with _lock:
    if 'ok' not in _status:
      try:
        _register(_build())
        _status['ok'] = True
      except (OSError, subprocess.SubprocessError, AttributeError) as e:
        lines = str(e).strip().splitlines()
        _status['ok'], _status['why'] = False, lines[-1] if lines else type(e).__name__
        logging.warning('lstm.native: the CPU kernel is not available (%s); the XLA loops run '
                        'instead', _status['why'])
    return _status['ok']


def _compiler() -> str:
  return os.environ.get('CXX') or 'g++'


def _include_dir() -> str:
  return jax.ffi.include_dir()


def _cpu_name() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      lines = [l for l in f if l.startswith(('model name', 'flags'))]
    return ''.join(sorted(set(lines)))
  except OSError:
    return platform.processor()


def _build() -> str:
  """Path of the compiled kernel for this source, compiler, jaxlib and CPU (built if missing)."""
  import jaxlib  # jax's own dependency
  compiler = _compiler()
  if shutil.which(compiler) is None:
    raise OSError(f'no C++ compiler {compiler!r} on PATH (set CXX)')
  version = subprocess.run([compiler, '--version'], capture_output=True, text=True,
                           check=True).stdout
  with open(SOURCE, 'rb') as f:
    source = f.read()
  key = hashlib.sha256(b'\0'.join([source, version.encode(), jaxlib.__version__.encode(),
                                   _cpu_name().encode(), TARGET.encode()])).hexdigest()[:16]
  directory = os.path.join(cache.directory(), 'native')
  path = os.path.join(directory, f'lstm_cpu-{key}.so')
  if os.path.exists(path):
    return path
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=directory)
  os.close(fd)
  try:
    cmd = [compiler, '-O3', TARGET, '-std=c++17', '-shared', '-fPIC', '-w',
           '-isystem', _include_dir(), SOURCE, '-o', tmp, '-lpthread']
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
      raise OSError(f'{" ".join(cmd[:2])} ... failed: {result.stderr.strip()[-500:]}')
    os.replace(tmp, path)  # atomic: a concurrent process finds the whole file or none
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def _register(path: str) -> None:
  library = ctypes.cdll.LoadLibrary(path)
  if library.StackedLstmVectorBits() not in (512, 256):
    raise OSError('this CPU has neither AVX-512 nor AVX2 with FMA, the targets the kernel is '
                  'written for')
  jax.ffi.register_ffi_target(_TARGETS['forward'], jax.ffi.pycapsule(library.StackedLstmForward),
                              platform='cpu')
  jax.ffi.register_ffi_target(_TARGETS['backward'],
                              jax.ffi.pycapsule(library.StackedLstmBackward), platform='cpu')


def _target(name: str) -> str:
  if not available():
    raise RuntimeError(f'lstm.native: the CPU kernel is not available ({_status["why"]})')
  return _TARGETS[name]


def _mask(mask: Optional[jax.Array]) -> jax.Array:
  return jnp.zeros((0,), jnp.float32) if mask is None else mask.astype(jnp.float32)


def forward(x, kernel, w, b, h0, c0, mask: Optional[jax.Array], keep_gates: bool = True):
  """The loop over x (T, B, F, float32): (gates, hs, cs); gates (T, B, 4H) are the activations
  the backward reads, (0,) unless `keep_gates`."""
  steps, batch, _ = x.shape
  carries = jax.ShapeDtypeStruct((steps, batch, w.shape[0]), jnp.float32)
  gates = jax.ShapeDtypeStruct((steps, batch, w.shape[1]) if keep_gates else (0,), jnp.float32)
  call = jax.ffi.ffi_call(_target('forward'), (gates, carries, carries),
                          vmap_method='sequential')
  return call(x, kernel, w, b, h0, c0, _mask(mask))


def backward(gates, cs, c0, w, dy, dh_last, dc_last, mask: Optional[jax.Array]):
  """The reverse loop from the kept gates: (dz, dh0, dc0), dz (T, B, 4H)."""
  carry = jax.ShapeDtypeStruct(c0.shape, jnp.float32)
  call = jax.ffi.ffi_call(_target('backward'),
                          (jax.ShapeDtypeStruct(gates.shape, jnp.float32), carry, carry),
                          vmap_method='sequential')
  return call(gates, cs, c0, w, dy, dh_last, dc_last, _mask(mask))
