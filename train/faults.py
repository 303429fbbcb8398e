"""Faults of a run's environment, reported as one line: `RunFault`, the one exception type for
them (a write that failed, a damaged checkpoint, device memory that ran out, a loss that
diverged), and what finds the cause inside the libraries' own exceptions.

`writing(path)` turns a failed write into `RunFault('could not write PATH: [Errno 28] No space
left on device')`: an OSError anywhere in the exception's chain, or the OS error code that
tensorstore (under orbax) puts in its messages. `out_of_memory(error)` tells XLA's
RESOURCE_EXHAUSTED apart, and `out_of_memory_reported` turns it into one line naming the sizes.
`reason(error)` is an exception's message cut to one readable line.
`drop_orbax_leftovers()` silences the tracebacks that orbax's unfinished operations print after
it has given up on a failed read or write ("Event loop is closed", "Task exception was never
retrieved", "coroutine ... was never awaited").
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import traceback
import warnings
from typing import Callable, Iterator, Optional


class RunFault(RuntimeError):
  """A run cannot go on because of its environment; the message is the one line to show."""


_OS_ERROR_CODE = re.compile(r"os_error_code='(\d+)'")  # tensorstore's annotation


def os_error(error: BaseException) -> Optional[OSError]:
  """The OS error behind `error`: itself, one in its chain of causes, or the code tensorstore
  names in its message; None when there is none."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno is not None:
      return error
    code = _OS_ERROR_CODE.search(str(error))
    if code:
      number = int(code.group(1))
      return OSError(number, os.strerror(number))
    error = error.__cause__ or error.__context__
  return None


def describe_os_error(error: OSError) -> str:
  """'[Errno 28] No space left on device' (without the file name that OSError adds)."""
  return f'[Errno {error.errno}] {error.strerror or os.strerror(error.errno)}'


@contextlib.contextmanager
def writing(path: str, what: str = '', note: str = '', action: str = 'write') -> Iterator[None]:
  """Raises RunFault('could not ACTION [WHAT to ]PATH: [Errno N] ...[; NOTE]') for a failed
  write in the block; errors that no OS error caused pass through."""
  try:
    yield
  except RunFault:
    raise
  except Exception as e:  # noqa: BLE001 - orbax and tensorstore wrap OS errors in their own
    cause = os_error(e)
    if cause is None:
      raise
    target = f'{what} to {path}' if what else path
    raise RunFault(f'could not {action} {target}: {describe_os_error(cause)}'
                   + (f'; {note}' if note else '')) from None


def out_of_memory(error: BaseException) -> bool:
  """True for XLA's failure to allocate device memory (at compile or run time)."""
  import jax
  text = str(error)
  return isinstance(error, jax.errors.JaxRuntimeError) and (
      'RESOURCE_EXHAUSTED' in text or 'Out of memory allocating' in text)  # the latter: XLA's CPU


@contextlib.contextmanager
def out_of_memory_reported(sizes: Callable[[], str], remedy: str) -> Iterator[None]:
  """Turns XLA's RESOURCE_EXHAUSTED in the block into RunFault('out of memory on the device
  (REASON) for SIZES; REMEDY'); `sizes()` says what was asked of the device."""
  try:
    yield
  except Exception as e:  # noqa: BLE001 - jax raises JaxRuntimeError for every XLA status
    if not out_of_memory(e):
      raise
    raise RunFault(f'out of memory on the device ({reason(e)}) for {sizes()}; {remedy}') from None


_ANNOTATION = re.compile(r"\s*\[\w+(\[\d+\])?='.*?'\]", re.S)


def reason(error: BaseException, limit: int = 240) -> str:
  """What went wrong, in one line: the message of the innermost cause (orbax wraps
  tensorstore's precise error in a vaguer one), without tensorstore's [key='...'] annotations,
  and its innermost parts when a long "a: b: c" chain is too long."""
  seen = {id(error)}
  while (error.__cause__ or error.__context__) is not None:
    inner = error.__cause__ or error.__context__
    if id(inner) in seen:
      break
    seen.add(id(inner))
    error = inner
  text = _ANNOTATION.sub('', str(error)).strip()
  line = text.splitlines()[0] if text else type(error).__name__
  while len(line) > limit and ': ' in line:
    line = line.split(': ', 1)[1]
  return line[:limit]


def _from_orbax(unraisable) -> bool:
  """An error left behind by orbax's operations: tensorstore's callbacks into an event loop that
  orbax has closed, or a coroutine of orbax that never ran to its end."""
  error, code = unraisable.exc_value, getattr(unraisable.object, 'cr_code', None)
  return ((isinstance(error, RuntimeError) and str(error) == 'Event loop is closed')
          or (code is not None and '/orbax/' in code.co_filename))


_TENSORSTORE_STATUS = re.compile(r'[A-Z_]+: ')  # how tensorstore's errors begin: 'NOT_FOUND: ...'


class _OrbaxTasks(logging.Filter):
  """Drops asyncio's reports of the orbax tasks and tensorstore futures whose exception nobody
  retrieved."""

  def filter(self, record) -> bool:
    if not record.exc_info or 'exception was never retrieved' not in record.getMessage():
      return True
    _, error, trace = record.exc_info
    frames = traceback.extract_tb(trace)
    return not (any('/orbax/' in frame.filename for frame in frames)
                or (not frames and _TENSORSTORE_STATUS.match(str(error))))


def drop_orbax_leftovers() -> None:
  """Silences what orbax leaves behind after it gives up on a failed read or write (it raises
  the failure to the caller): the rest of its operations still end, and their errors would be
  printed as tracebacks ("Event loop is closed", "Task exception was never retrieved"), or as
  the warning that one of its reads was never awaited (the trainer runs no coroutines of its
  own, so that warning is orbax's)."""
  warnings.filterwarnings('ignore', message=r"coroutine '.*' was never awaited",
                          category=RuntimeWarning)
  asyncio_log = logging.getLogger('asyncio')
  if not any(isinstance(f, _OrbaxTasks) for f in asyncio_log.filters):
    asyncio_log.addFilter(_OrbaxTasks())
  hook = sys.unraisablehook
  if getattr(hook, 'drops_orbax_leftovers', False):
    return

  def filtered(unraisable):
    if not _from_orbax(unraisable):
      hook(unraisable)
  filtered.drops_orbax_leftovers = True
  sys.unraisablehook = filtered
