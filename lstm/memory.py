"""Keeping freed memory in the process, so that XLA:CPU's buffers stop page-faulting every step.

XLA:CPU allocates the buffers of each execution with malloc and frees them afterwards. glibc
gives large blocks back to the operating system (munmap, or trimming the heap top), so the next
step writes to fresh pages and takes a page fault for every 4 KiB: one projection and loop of a
layer with batch 32, hidden 256 and 128 steps took about 15,000 minor faults and 40 ms instead of
18 (2-core AMD EPYC, `python bench/bench_lstm.py --part speed`; PyTorch on the CPU pays the same
way). `keep_freed_memory()` tells glibc's malloc to keep freed memory for reuse: no trimming,
no mmap for large blocks, the heap grown 64 MiB at a time, and one arena for every thread. The
last matters as much as the others: XLA:CPU allocates from its own threads, and a thread's
arena other than the main one serves a block over 64 MiB (one training step's temp buffers, for
example) with mmap whatever the settings, so without it a 2-layer training step still took
~31,000 minor faults and 175 ms instead of ~3,300 and 135 ms (`python bench/bench_lstm.py`'s
2-layer case, AMD EPYC family 25 model 17). The process's resident memory then stays at its
peak, as with PyTorch's caching allocators on GPUs.

It is process-wide and lasts for the process. Call it before JAX starts its threads (a thread
that has already allocated keeps its arena): `main.py` calls it first thing, and the trainer
again, unless `config.keep_freed_memory` is False. Where the C library is not glibc it does
nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import threading

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -4, -8
_SETTINGS = ((_M_TRIM_THRESHOLD, 2**31 - 1), (_M_MMAP_MAX, 0), (_M_TOP_PAD, 64 << 20),
             (_M_ARENA_MAX, 1))

_lock = threading.Lock()
_done: list = []


def keep_freed_memory() -> bool:
  """Sets glibc's malloc to keep freed memory in the process; True if it took effect."""
  with _lock:
    if not _done:
      _done.append(_apply())
    return _done[0]


def _apply() -> bool:
  name = ctypes.util.find_library('c')
  try:
    libc = ctypes.CDLL(name)
    mallopt = libc.mallopt
  except (OSError, AttributeError, TypeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return all(mallopt(param, value) == 1 for param, value in _SETTINGS)
