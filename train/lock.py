"""One writer per directory: an exclusive lock on `DIR/.lock` that a training run, an evaluation
that writes its record, an import (`train.export --from_torch`) and a sweep (on its sweep
directory) take before they write anything there.

The lock is a POSIX record lock (`fcntl.lockf`), which network filesystems (NFS) carry between
hosts. The kernel (or the file server) drops it when the holding process ends, however it ends, so
a holder that died leaves no lock behind: the stale-lock rule is that a lock file nobody holds is
free, whatever it records. While held, the file records the holder (host, pid, start time and
what it does), which a refusal names; a holder that ends cleanly empties it, one that was killed
leaves its record for the next holder to overwrite.

A second process that asks for a held lock is refused at once (`Busy`, one line naming the
holder); nothing waits. In one process the lock is re-entrant (POSIX locks belong to the
process, and closing any descriptor of the file would drop it, so the file is opened once).
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import struct
from typing import Iterator, Optional

from train import faults

LOCK_FILE = '.lock'
_FLOCK = 'hhqqi'  # struct flock: type, whence, start, length, pid

_held: dict[str, list] = {}  # real path of a directory this process holds -> [fd, depth]


class Busy(faults.RunFault):
  """Another process holds the directory's lock."""


def _key(directory: str) -> str:
  return os.path.realpath(directory)


def held(directory: str) -> bool:
  """True when this process holds `directory`'s lock."""
  return _key(directory) in _held


def describe(record: Optional[dict]) -> str:
  """'pid 123 on host h (training, since 2025-01-01 12:00:00)' for a holder's record."""
  if not record:
    return 'another process (it has not written its record yet)'
  return (f'pid {record.get("pid")} on host {record.get("host")} ({record.get("what")}, since '
          f'{record.get("started")})')


def _read_record(fd: int) -> Optional[dict]:
  try:
    return json.loads(os.pread(fd, 4096, 0).decode('utf-8'))
  except (OSError, ValueError):
    return None


def take(directory: str, what: str) -> None:
  """Takes `directory`'s lock for this process (again, if it holds it already); `what` says what
  the process does ('training', 'evaluation', ...). Raises `Busy` when another process holds
  it, RunFault when the lock file cannot be written."""
  key = _key(directory)
  if key in _held:
    _held[key][1] += 1
    return
  path = os.path.join(directory, LOCK_FILE)
  with faults.writing(path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
  try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    record = _read_record(fd)
    os.close(fd)
    if e.errno not in (errno.EACCES, errno.EAGAIN):
      raise faults.RunFault(f'could not lock {path}: {faults.describe_os_error(e)}') from None
    raise Busy(f'{directory} is in use by {describe(record)}: one process writes to a run '
               'directory at a time; wait for it to end, or stop it (kill -TERM '
               f'{(record or {}).get("pid", "PID")} saves a checkpoint and exits)') from None
  record = {'host': socket.gethostname(), 'pid': os.getpid(), 'what': what,
            'started': datetime.datetime.now().isoformat(sep=' ', timespec='seconds')}
  try:
    with faults.writing(path):
      os.ftruncate(fd, 0)
      os.pwrite(fd, (json.dumps(record) + '\n').encode('utf-8'), 0)
  except BaseException:
    os.close(fd)
    raise
  _held[key] = [fd, 1]


def release(directory: str) -> None:
  """Gives back one `take` of `directory`'s lock; the last one empties the record and unlocks."""
  key = _key(directory)
  entry = _held.get(key)
  if entry is None:
    return
  entry[1] -= 1
  if entry[1]:
    return
  del _held[key]
  with contextlib.suppress(OSError):
    os.ftruncate(entry[0], 0)
  os.close(entry[0])


@contextlib.contextmanager
def holding(directory: str, what: str) -> Iterator[None]:
  """`take` for the block, `release` after it."""
  take(directory, what)
  try:
    yield
  finally:
    release(directory)


def holder(directory: str) -> Optional[str]:
  """Who holds `directory`'s lock (as `describe` says it), or None when no other process does
  (this process's own lock is not reported). Asks the kernel (F_GETLK) without taking the lock,
  and writes nothing."""
  if held(directory):
    return None
  try:
    fd = os.open(os.path.join(directory, LOCK_FILE), os.O_RDONLY)
  except OSError:
    return None
  try:
    query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    answer = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, query))
    return None if answer[0] == fcntl.F_UNLCK else describe(_read_record(fd))
  finally:
    os.close(fd)
