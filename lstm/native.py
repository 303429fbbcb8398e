"""The CPU kernel of one canonical LSTM layer's time loop (lstm/kernels/lstm_cpu.cc), as two
JAX primitives whose CPU lowering is an XLA FFI call.

`lstm.fast` runs a layer's recurrence here, forward and backward, when `usable(...)` holds: a
float32 layer traced on a CPU host, tanh/sigmoid gates and H a multiple of 16, without resets,
recurrent dropout or coupled gates. The kernel is built when first needed (on the first trace of
such a layer), not when the package is installed: it is compiled for the CPU it runs on
(`-march=native`), with the machine's C++ compiler (`$CXX`, else g++) against the XLA FFI headers
of the jaxlib in use, so one build fits whatever jax the user installs later and whatever CPU a
shared home directory is mounted on; a wheel would have to ship AVX-512 and AVX2 builds for each
jaxlib. The build takes about 10 s once per machine and is said through the `lstm.native` logger
(INFO: what, how long, where); it lands in the cache directory (`lstm.cache`), keyed by its
source, the compiler, jaxlib and the CPU, with its size and SHA-256 recorded beside it. A kernel
whose file no longer matches its record is set aside (`*.damaged`) and built again; a compiler
that runs past `build_timeout()` seconds (`STACKED_LSTM_BUILD_TIMEOUT`, default 300) is stopped;
a directory or file that other users can write is not loaded from. In each of these cases, where
no compiler works, where the CPU has neither AVX-512 nor AVX2 with FMA, with
`STACKED_LSTM_NATIVE=0`, or inside `disabled()`, `lstm.fast` keeps its XLA loops (a warning says
why, once, through the `lstm.native` logger).

bfloat16 layers, with the same options (`model.dtype=bfloat16`, `StackedLSTM(dtype=jnp.bfloat16)`),
run in the kernel where the CPU has AVX512-BF16 (`bf16_available()`: the build targets it, which
`-march=native` does on such a CPU, and /proc/cpuinfo's flags name `avx512_bf16`): weights and
inputs in bfloat16, their products by vdpbf16ps accumulating in float32, the gates, the cell and
every elementwise step in float32, stored in bfloat16 where the XLA loops store them (gates, h, c,
dz). CPUs with AMX-BF16 (Intel Xeon from Sapphire Rapids on) have AVX512-BF16 too and run the same
instructions; the AMX tiles are not used. Where the CPU lacks AVX512-BF16 (AVX2 CPUs, and AVX-512
ones such as the Intel Xeons from Skylake to Ice Lake), bfloat16 layers keep `lstm.fast`'s XLA
loops.

The kernel is chosen per platform when a program is lowered, not when it is traced: each
primitive lowers to the FFI call for `cpu` and to an XLA loop computing the same function
(`lstm.fast.kernel_forward_xla` / `kernel_backward_xla`) for every other platform, for a CPU host
without the kernel, and for `jax.export` (an exported program must not depend on a kernel built
for this machine). Both primitives are differentiable to any order (their derivatives are those
of the XLA loops), batch under `vmap` one member at a time, and follow `shard_map`'s varying axes.

    forward(x, kernel, w, b, h0, c0, mask)  -> gates, hs, cs  (float32 or bfloat16; mask float32)
    backward(gates, cs, c0, w, dy, dh_last, dc_last, mask) -> dz, dh0, dc0
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import logging
import os
import platform
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from typing import Optional

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core
from jax.interpreters import ad, batching, mlir

from lstm import cache, manual_axes, switches

ENV = 'STACKED_LSTM_NATIVE'
TIMEOUT_ENV = 'STACKED_LSTM_BUILD_TIMEOUT'
DEFAULT_TIMEOUT_S = 300.0
TARGET = '-march=native'  # the compiler's target CPU
LANES = 16  # H must be a multiple of the kernel's widest vector, in floats
SOURCE = os.path.join(os.path.dirname(__file__), 'kernels', 'lstm_cpu.cc')
_TARGETS = {'forward': 'stacked_lstm_forward', 'backward': 'stacked_lstm_backward'}
BF16_FLAG = 'avx512_bf16'  # the CPU flag (/proc/cpuinfo) of the bfloat16 calls' instructions
_BF16_TARGETS = {name: target + '_bf16' for name, target in _TARGETS.items()}

log = logging.getLogger(__name__)
_lock = threading.Lock()
_status: dict = {}  # 'ok' -> bool, 'why' -> str


_off = switches.Switch()


def disabled(off: bool = True):
  """Within this context, layers traced use `lstm.fast`'s XLA loops (tests, benchmarks)."""
  return _off.set(off)


def usable(dtype, hidden: int, closed_form: bool, plain: bool) -> bool:
  """Whether `lstm.fast` may run a layer's loop here: float32 (or bfloat16 where
  `bf16_available()`) traced on a CPU host, tanh/sigmoid gates (`closed_form`), H a multiple of
  LANES, and `plain` (no resets, recurrent dropout or CIFG). Builds the kernel on the first call
  that needs it."""
  if _off.on() or os.environ.get(ENV, '1') == '0':
    return False
  dtype = jnp.dtype(dtype)
  if not (closed_form and plain and dtype in (jnp.float32, jnp.bfloat16) and hidden % LANES == 0):
    return False
  if jax.default_backend() != 'cpu':
    return False  # accelerators keep the XLA loops; a CPU lowering of such a program has them too
  return bf16_available() if dtype == jnp.bfloat16 else available()


def available() -> bool:
  """Whether the kernel is built and registered (builds it on the first call)."""
  with _lock:
    if 'ok' not in _status:
      try:
        _status['bf16'] = _register(_build())
        _status['ok'] = True
      except (OSError, subprocess.SubprocessError, AttributeError) as e:
        lines = str(e).strip().splitlines()
        _status['ok'], _status['bf16'] = False, False
        _status['why'] = lines[-1] if lines else type(e).__name__
        log.warning('the CPU kernel is not available (%s); the XLA loops run instead',
                    _status['why'])
    return _status['ok']


def bf16_available() -> bool:
  """Whether bfloat16 layers run in the kernel here: the CPU has AVX512-BF16 (`cpu_has_bf16()`)
  and the kernel, built for it, has its bfloat16 calls (builds it on the first call)."""
  return cpu_has_bf16() and available() and _status.get('bf16', False)


@functools.cache  # read once per process: the CPU does not change under it
def cpu_has_bf16() -> bool:
  """Whether this CPU has AVX512-BF16: `BF16_FLAG` among the flags in /proc/cpuinfo."""
  return any(line.startswith('flags') and BF16_FLAG in line.split()
             for line in _cpu_name().splitlines())


def build_timeout() -> float:
  """Seconds a kernel build may take: `$STACKED_LSTM_BUILD_TIMEOUT`, else DEFAULT_TIMEOUT_S."""
  value = os.environ.get(TIMEOUT_ENV)
  if not value:
    return DEFAULT_TIMEOUT_S
  try:
    seconds = float(value)
  except ValueError:
    seconds = -1.0
  if not seconds > 0:
    raise OSError(f'{TIMEOUT_ENV}={value!r} is not a number of seconds above 0')
  return seconds


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


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
  """`cmd` in a process group of its own, stopped with all its children past `timeout` s."""
  process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
  try:
    out, err = process.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    raise OSError(f'{cmd[0]} did not finish within {timeout:g} s and was stopped (set '
                  f'{TIMEOUT_ENV} to allow longer)') from None
  return subprocess.CompletedProcess(cmd, process.returncode, out, err)


def _check_private(path: str) -> None:
  """Refuses a directory or file that other users can write (they could replace the kernel)."""
  info = os.stat(path)
  if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or info.st_uid != os.getuid():
    whose = 'owned by another user' if info.st_uid != os.getuid() else \
        f'writable by other users (mode {stat.filemode(info.st_mode)})'
    raise OSError(f'{path} is {whose}, so a kernel there is not loaded; make it private '
                  f'(chmod go-w) or point ${cache.ENV} elsewhere')


def _digest(path: str) -> dict:
  with open(path, 'rb') as f:
    data = f.read()
  return {'size': len(data), 'sha256': hashlib.sha256(data).hexdigest()}


def _intact(path: str) -> bool:
  """Whether the built kernel at `path` still has the size and SHA-256 recorded at its build;
  a damaged one is set aside as `path.damaged` (with a warning), never loaded."""
  record = path + '.json'
  found, expected = _digest(path), None
  try:
    with open(record) as f:
      expected = json.load(f)
  except (OSError, ValueError):
    pass
  if found == expected:
    return True
  aside = path + '.damaged'
  os.replace(path, aside)
  if expected is None:  # e.g. built by a version of this library that kept no record
    log.info('the cached CPU kernel %s has no build record; set aside as %s and built again',
             path, aside)
  else:
    log.warning('the cached CPU kernel %s does not match its build record %s (%s bytes, '
                'recorded %s); set aside as %s and built again', path, record, found['size'],
                expected.get('size') if isinstance(expected, dict) else '?', aside)
  return False


def _build() -> str:
  """Path of the compiled kernel for this source, compiler, jaxlib and CPU (built if missing)."""
  import jaxlib  # jax's own dependency
  compiler = _compiler()
  if shutil.which(compiler) is None:
    raise OSError(f'no C++ compiler {compiler!r} on PATH (set CXX)')
  timeout = build_timeout()
  version = _run([compiler, '--version'], timeout).stdout
  with open(SOURCE, 'rb') as f:
    source = f.read()
  key = hashlib.sha256(b'\0'.join([source, version.encode(), jaxlib.__version__.encode(),
                                   _cpu_name().encode(), TARGET.encode()])).hexdigest()[:16]
  directory = os.path.join(cache.directory(), 'native')
  path = os.path.join(directory, f'lstm_cpu-{key}.so')
  os.makedirs(directory, mode=0o700, exist_ok=True)
  _check_private(directory)
  if os.path.exists(path):
    _check_private(path)
    if _intact(path):
      return path
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=directory)
  os.close(fd)
  log.info('building the CPU kernel with %s %s (once per machine, compiler and jaxlib; about '
           '10 s)', compiler, TARGET)
  start = time.perf_counter()
  try:
    cmd = [compiler, '-O3', TARGET, '-std=c++17', '-shared', '-fPIC', '-w',
           '-isystem', _include_dir(), SOURCE, '-o', tmp, '-lpthread']
    result = _run(cmd, timeout)
    if result.returncode != 0:
      raise OSError(f'{" ".join(cmd[:2])} ... failed: {result.stderr.strip()[-500:]}')
    _write_record(path + '.json', _digest(tmp))
    os.replace(tmp, path)  # atomic: a concurrent process finds the whole file or none
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  log.info('built the CPU kernel in %.1f s: %s (%d bytes)', time.perf_counter() - start, path,
           os.path.getsize(path))
  return path


def _write_record(record: str, digest: dict) -> None:
  fd, tmp = tempfile.mkstemp(suffix='.json', dir=os.path.dirname(record))
  with os.fdopen(fd, 'w') as f:
    json.dump(digest, f)
  os.replace(tmp, record)


def _register(path: str) -> bool:
  """Registers the kernel's calls; returns whether its bfloat16 calls were registered too (a
  build for AVX512-BF16 on a CPU that has it)."""
  library = ctypes.cdll.LoadLibrary(path)
  if library.StackedLstmVectorBits() not in (512, 256):
    raise OSError('this CPU has neither AVX-512 nor AVX2 with FMA, the targets the kernel is '
                  'written for')
  jax.ffi.register_ffi_target(_TARGETS['forward'], jax.ffi.pycapsule(library.StackedLstmForward),
                              platform='cpu')
  jax.ffi.register_ffi_target(_TARGETS['backward'],
                              jax.ffi.pycapsule(library.StackedLstmBackward), platform='cpu')
  if not (library.StackedLstmBf16() and cpu_has_bf16()):
    return False
  jax.ffi.register_ffi_target(_BF16_TARGETS['forward'],
                              jax.ffi.pycapsule(library.StackedLstmForwardBf16), platform='cpu')
  jax.ffi.register_ffi_target(_BF16_TARGETS['backward'],
                              jax.ffi.pycapsule(library.StackedLstmBackwardBf16), platform='cpu')
  return True


# ----------------------------------------------------------------------------------------------
# The primitives


# The XLA loops that compute what the kernel's calls compute, by call name: `lstm.fast` (which
# imports this module) registers them with `register_xla_loops` when it is imported.
_XLA_LOOPS: dict = {}


def register_xla_loops(forward, backward) -> None:
  """Names the XLA functions that stand in for the kernel's forward and backward calls."""
  _XLA_LOOPS.update(forward=forward, backward=backward)


def _xla(name: str):
  """The XLA loop that computes what the kernel's `name` computes."""
  return _XLA_LOOPS[name]


def _target(name: str, dtype) -> Optional[str]:
  """The FFI target of the kernel's call `name` on `dtype` arrays; None where it has none here."""
  dtype = jnp.dtype(dtype)
  if dtype == jnp.float32 and available():
    return _TARGETS[name]
  if dtype == jnp.bfloat16 and bf16_available():
    return _BF16_TARGETS[name]
  return None


def _primitive(name: str):
  prim = jex_core.Primitive(_TARGETS[name])
  prim.multiple_results = True
  xla = lambda *args, **params: _xla(name)(*args, **params)
  prim.def_impl(lambda *args, **params: jax.jit(functools.partial(prim.bind, **params))(*args))
  prim.def_abstract_eval(
      lambda *avals, **params: list(
          jax.make_jaxpr(functools.partial(xla, **params))(*avals).out_avals))

  def lower_xla(ctx, *args, **params):
    return mlir.lower_fun(functools.partial(xla, **params), multiple_results=True)(ctx, *args)

  def lower_cpu(ctx, *args, **params):
    parameters = getattr(ctx.module_context, 'lowering_parameters', None)
    target = _target(name, ctx.avals_in[0].dtype)
    if getattr(parameters, 'for_export', False) or target is None:
      return lower_xla(ctx, *args, **params)
    return jax.ffi.ffi_lowering(target)(ctx, *args)

  mlir.register_lowering(prim, lower_xla)  # cached per module lowered: one export flag in each
  mlir.register_lowering(prim, lower_cpu, platform='cpu')

  def jvp(primals, tangents, **params):
    tangents = [ad.instantiate_zeros(t) for t in tangents]
    return jax.jvp(functools.partial(xla, **params), tuple(primals), tuple(tangents))

  ad.primitive_jvps[prim] = jvp

  def batch(args, dims, **params):
    """One member at a time, as the kernel takes one (T, B, .) problem per call."""
    mapped = [d is not None for d in dims]
    args = [jnp.moveaxis(a, d, 0) if d is not None else a for a, d in zip(args, dims)]

    def one(members):
      members = iter(members)
      return prim.bind(*[next(members) if m else a for a, m in zip(args, mapped)], **params)

    out = jax.lax.map(one, [a for a, m in zip(args, mapped) if m])
    return out, [0] * len(out)

  batching.primitive_batchers[prim] = batch
  return prim


_forward_p = _primitive('forward')
_backward_p = _primitive('backward')


def _mask(mask: Optional[jax.Array]) -> jax.Array:
  return jnp.zeros((0,), jnp.float32) if mask is None else mask.astype(jnp.float32)


def forward(x, kernel, w, b, h0, c0, mask: Optional[jax.Array], keep_gates: bool = True):
  """The loop over x (T, B, F; float32, or bfloat16 with every other array bfloat16 too): (gates,
  hs, cs) in x's dtype; gates (T, B, 4H) are the activations the backward reads, (0,) unless
  `keep_gates`."""
  args = manual_axes.vary_together(x, kernel, w, b, h0, c0, _mask(mask))
  return tuple(_forward_p.bind(*args, keep_gates=keep_gates))


def backward(gates, cs, c0, w, dy, dh_last, dc_last, mask: Optional[jax.Array]):
  """The reverse loop from the kept gates: (dz, dh0, dc0), dz (T, B, 4H)."""
  args = manual_axes.vary_together(gates, cs, c0, w, dy, dh_last, dc_last, _mask(mask))
  return tuple(_backward_p.bind(*args))
