"""Which inference loop order a CPU runs faster: measured once per machine and shape, cached.

`lstm.fast` runs a layer's inference (nothing differentiated) either batch-major (the inputs of
all steps projected by one matmul, then a loop of `h w`) or feature-major (carries (H, B), each
step `kernel^T x_t + w^T h`). Which is faster depends on the CPU as well as the sizes: on one AMD
EPYC the feature-major loop took 0.86x the batch-major time at batch 32 x hidden 256, on a newer
one about the same time. So on CPU the loop order is measured, not guessed:

* `policy()`: 'measure' (the default), 'rule' (batch >= 32 and hidden >= 256, measured on the first
  machine), 'batch_major' or 'feature_major'; set by `set_policy` or the environment variable
  `LSTM_LOOP_ORDER`. Accelerators always run batch-major, and so does a program of several
  JAX processes (every process must trace the same program) and any layer below batch 16 or
  hidden 128, where the feature-major loop lost on every machine measured.
* Measuring compiles one canonical layer of the shape in each loop order (MEASURE_STEPS = 128 steps:
  at 32 the fixed costs decide, and on an Intel Xeon 32 steps chose batch-major for a layer that
  runs 0.95x as long feature-major over 128) and times both interleaved, in a thread of its own
  so that it runs outside the trace that asked; the faster by its best time is kept, and the
  rule's choice when they are within 3%. It takes a few seconds, once per shape and machine.
* Choices are kept in memory and in `loop_order.json` in the project's cache directory
  (`lstm.cache`: `$STACKED_LSTM_CACHE`, else `~/.cache/stacked_lstm`), keyed by the CPU
  (`cpu_name()`), the JAX version and the shape; the file is replaced atomically, a file that
  cannot be read is measured anew, and one that cannot be written leaves the choice in memory.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import re
import tempfile
import threading
import time
from typing import Callable, Optional

import jax

from lstm import cache

POLICIES = ('measure', 'rule', 'batch_major', 'feature_major')
MEASURE_STEPS = 128
TIE = 0.03  # a measured difference under this fraction keeps the rule's choice
_lock = threading.Lock()
_memory: dict[str, bool] = {}
_policy: Optional[str] = None
log = logging.getLogger(__name__)


def policy() -> str:
  """The loop-order policy: `set_policy`'s, else `LSTM_LOOP_ORDER`, else 'measure'."""
  chosen = _policy or os.environ.get('LSTM_LOOP_ORDER') or 'measure'
  if chosen not in POLICIES:
    raise ValueError(f'LSTM_LOOP_ORDER={chosen!r} is not a loop-order policy; use one of '
                     f'{", ".join(POLICIES)}')
  return chosen


def set_policy(name: Optional[str]) -> None:
  """Sets the policy for this process (None: back to the environment's or the default)."""
  global _policy
  if name is not None and name not in POLICIES:
    raise ValueError(f'set_policy(name): name={name!r} is not a loop-order policy; use one of '
                     f'{", ".join(POLICIES)}, or None for LSTM_LOOP_ORDER or the default')
  _policy = name


def rule(batch: int, hidden: int) -> bool:
  """The size rule measured on the first machine: feature-major at batch >= 32, hidden >= 256."""
  return batch >= 32 and hidden >= 256


def feature_major(batch: int, hidden: int, features: int, dtype,
                  measure: Callable[[int, int, int, object, int], tuple[float, float]]) -> bool:
  """Whether a layer's inference of this shape runs feature-major on this machine.

  `measure(batch, hidden, features, dtype, steps)` returns the best seconds of (batch-major,
  feature-major) for that shape; it is called only on a cache miss under the 'measure' policy.
  """
  if jax.default_backend() != 'cpu' or batch < 16 or hidden < 128:
    return False
  chosen = policy()
  if chosen != 'measure' or jax.process_count() > 1:
    return chosen == 'feature_major' or (chosen != 'batch_major' and rule(batch, hidden))
  key = cache_key(batch, hidden, features, dtype)
  with _lock:
    if key not in _memory:
      _memory.update(_read(_cache_file()))
    if key not in _memory:
      start = time.perf_counter()
      times = _outside_trace(lambda: measure(batch, hidden, features, dtype, MEASURE_STEPS))
      _memory[key] = _faster_is_feature_major(*times, rule(batch, hidden))
      _write(_cache_file(), key, _memory[key])
      log.info('timed the inference loop orders of batch %d x hidden %d (features %d) in %.1f s: '
               'batch-major %.3g ms, feature-major %.3g ms; %s kept in %s', batch, hidden,
               features, time.perf_counter() - start, 1e3 * times[0], 1e3 * times[1],
               'feature-major' if _memory[key] else 'batch-major', _cache_file())
    return _memory[key]


def _faster_is_feature_major(batch_major_s: float, feature_major_s: float, default: bool) -> bool:
  if abs(feature_major_s - batch_major_s) <= TIE * min(feature_major_s, batch_major_s):
    return default
  return feature_major_s < batch_major_s


def cache_key(batch: int, hidden: int, features: int, dtype) -> str:
  return (f'{cpu_name()} | jax {jax.__version__} | batch {batch} hidden {hidden} '
          f'features {features} {jax.numpy.dtype(dtype).name} | {MEASURE_STEPS} steps')


def cpu_name(cpuinfo: str = '/proc/cpuinfo') -> str:
  """The CPU's `model name` (`platform.processor()` where /proc/cpuinfo has none). A name without
  a model number (a virtual machine's 'AMD EPYC', which has named two generations) gets the CPU
  family and model appended: 'AMD EPYC (family 26 model 2)'."""
  fields = {}
  try:
    with open(cpuinfo) as f:
      for line in f:
        if not line.strip():
          break
        key, _, value = line.partition(':')
        fields.setdefault(key.strip(), value.strip())
  except OSError:
    pass
  name = fields.get('model name')
  if not name:
    return platform.processor() or platform.machine() or 'unknown'
  if not re.search(r'\d', name) and 'cpu family' in fields and 'model' in fields:
    name += f' (family {fields["cpu family"]} model {fields["model"]})'
  return name


def _outside_trace(fn):
  """`fn()` in a thread of its own: JAX's trace state is per thread, so what `fn` compiles and
  runs is not staged into the trace that is running here."""
  result = []
  thread = threading.Thread(target=lambda: result.append(_captured(fn)), daemon=True)
  thread.start()
  thread.join()
  value, error = result[0]
  if error is not None:
    raise error
  return value


def _captured(fn):
  try:
    return fn(), None
  except Exception as e:  # noqa: BLE001 - raised again in the calling thread
    return None, e


def time_best(fns: dict[str, Callable[[], object]], reps: int = 5, budget: float = 0.05
              ) -> dict[str, float]:
  """The best seconds per call of each function, timed interleaved (`reps` rounds of as many
  calls as fit in about `budget` seconds for the slowest)."""
  for fn in fns.values():
    jax.block_until_ready(fn())
  first = {}
  for name, fn in fns.items():
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first[name] = time.perf_counter() - t0
  calls = max(1, int(budget / max(max(first.values()), 1e-6)))
  best = {name: float('inf') for name in fns}
  for _ in range(reps):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      for _ in range(calls):
        out = fn()
      jax.block_until_ready(out)
      best[name] = min(best[name], (time.perf_counter() - t0) / calls)
  return best


def _cache_file() -> str:
  return os.path.join(cache.directory(), 'loop_order.json')


def _read(path: str) -> dict[str, bool]:
  try:
    with open(path) as f:
      saved = json.load(f)
    return {k: v for k, v in saved.items() if isinstance(v, bool)}
  except (OSError, ValueError, AttributeError):
    return {}


def _write(path: str, key: str, value: bool) -> None:
  """Adds `key` to the file, replacing it atomically; a cache that cannot be written is skipped."""
  tmp = None
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    saved = {**_read(path), key: value}
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.loop_order.')
    with os.fdopen(fd, 'w') as f:
      json.dump(saved, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
  except OSError:
    if tmp is not None and os.path.exists(tmp):
      os.remove(tmp)
