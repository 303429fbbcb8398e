"""Files of a run: writes that a reader never sees half of, JSON in and out, a run's
`results.json` read whatever version wrote it, and the dotted view of a saved config.

`atomic_write` writes to a temporary file in the target's directory and renames it over the
target, so a crash or a full disk leaves either the old file or the new one, never a mix; the
temporary file is removed when the write fails. `append` adds to a file (a log of records) and
cuts a write that failed halfway back off, so no partial line is left. A failed write raises
`faults.RunFault` naming the file and the OS error.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, BinaryIO, Callable, Optional

from flax import traverse_util

from train import faults


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
  """Calls `write(f)` on a temporary file beside `path`, then renames it to `path`."""
  with faults.writing(path):
    _atomic_write(path, write)


def _atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp_' + os.path.basename(path) + '.')
  try:
    with os.fdopen(fd, 'wb') as f:
      write(f)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def append(path: str, text: str) -> None:
  """Appends `text` to `path` (created if missing); if the write fails, the file is cut back to
  what it held."""
  with faults.writing(path):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
      size = os.fstat(fd).st_size
      left = memoryview(text.encode('utf-8'))
      try:
        while left:
          left = left[os.write(fd, left):]
      except OSError:
        os.ftruncate(fd, size)
        raise
    finally:
      os.close(fd)


def json_text(value: Any, **dump_options) -> str:
  """`value` as indented JSON with a newline at the end (what `write_json` writes)."""
  return json.dumps(value, indent=2, **dump_options) + '\n'


def write_json(path: str, value: Any, **dump_options) -> None:
  """`value` as indented JSON (a newline at the end), atomically; `dump_options` go to
  json.dumps (e.g. sort_keys=True)."""
  text = json_text(value, **dump_options)
  atomic_write(path, lambda f: f.write(text.encode('utf-8')))


def read_json(path: str) -> Optional[Any]:
  """The JSON value in `path`, or None when it is missing or unreadable."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


# results.json's keys that earlier versions wrote under another name: old -> today's.
RESULTS_RENAMED = {'task': 'dataset'}


def respelt(record: Any, renamed: dict[str, str]) -> Any:
  """`record` (a dict read from a run's JSON file) with each old key of `renamed` moved to its
  new name (where both are present, the new one wins); anything that is not a dict unchanged."""
  if not isinstance(record, dict):
    return record
  result = {key: value for key, value in record.items() if key not in renamed}
  for old, new in renamed.items():
    if old in record and new not in record:
      result[new] = record[old]
  return result


def read_results(workdir: str) -> Optional[Any]:
  """The run's `results.json` in today's keys (`RESULTS_RENAMED`), or None when it is missing or
  unreadable."""
  return respelt(read_json(os.path.join(workdir, 'results.json')), RESULTS_RENAMED)


def flatten(config: dict) -> dict[str, Any]:
  """A nested config dict as {'model.num_layers': 2, ...}."""
  return traverse_util.flatten_dict(config, sep='.')


def unflatten(flat: dict[str, Any]) -> dict:
  """{'model.num_layers': 2, ...} as a nested dict."""
  return traverse_util.unflatten_dict(flat, sep='.')
