"""Checksums of the files that describe a run (`config.json`, `dataset.json`, `vocab.json`), kept in
`DIR/checksums.json` as {file name: [sha256, ...]}, so that a file edited, truncated or deleted
after the run wrote it is refused in one line naming it instead of building another model or
reading another vocabulary.

`write(workdir, texts)` replaces files and their checksums so that a crash at any moment leaves
every file matching a checksum: `checksums.json` first lists both the old and the new sum of each
file, then the files are written, then only the new sums are kept. `verify(workdir, names)`
refuses a listed file that is missing or whose sum is not listed. A workdir written before
checksums existed has no `checksums.json`: its files are not checked (a missing sum is not
damage).
"""
from __future__ import annotations

import hashlib
import os
from typing import Iterable, Optional

from train import faults, files

CHECKSUMS = 'checksums.json'


def _sum(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def _file_sum(path: str) -> Optional[str]:
  try:
    with open(path, 'rb') as f:
      return _sum(f.read())
  except FileNotFoundError:
    return None
  except OSError as e:
    raise faults.RunFault(f'could not read {path}: {faults.describe_os_error(e)}') from None


def _read(workdir: str) -> Optional[dict]:
  """The recorded sums, or None when the workdir has none; RunFault for a damaged record."""
  path = os.path.join(workdir, CHECKSUMS)
  if not os.path.exists(path):
    return None
  saved = files.read_json(path)
  if not isinstance(saved, dict) or not all(isinstance(v, list) for v in saved.values()):
    raise faults.RunFault(f'{path} is damaged (not the JSON that the run wrote), so the run\'s '
                          'files cannot be checked; restore it from a copy of the run')
  return saved


def verify(workdir: str, names: Iterable[str]) -> None:
  """Refuses (RunFault, one line) a file of `names` that `checksums.json` lists and that is
  missing or holds other contents than the run wrote."""
  saved = _read(workdir)
  if saved is None:
    return
  for name in names:
    if name not in saved:
      continue
    path = os.path.join(workdir, name)
    found = _file_sum(path)
    if found is None:
      raise faults.RunFault(f'{path} is missing (the run wrote it: {CHECKSUMS} lists it); '
                            'restore it from a copy of the run')
    if found not in saved[name]:
      raise faults.RunFault(f'{path} was changed after the run wrote it (its sha256 is not the '
                            f'one in {CHECKSUMS}: edited, truncated or replaced); restore it from '
                            'a copy of the run')


def write(workdir: str, texts: dict[str, str]) -> None:
  """Writes each file of `texts` ({name: its full text}) atomically with its checksum; files
  that already hold their text are left alone."""
  saved = _read(workdir) or {}
  new = {name: _sum(text.encode('utf-8')) for name, text in texts.items()}
  current = {name: _file_sum(os.path.join(workdir, name)) for name in texts}
  changed = [name for name in texts if current[name] != new[name]]
  if not changed and all(saved.get(name) == [new[name]] for name in texts):
    return
  pending = dict(saved)
  for name in changed:
    before = saved.get(name, [current[name]] if current[name] else [])
    pending[name] = sorted(set(before) | {new[name]})
  path = os.path.join(workdir, CHECKSUMS)
  files.write_json(path, pending, sort_keys=True)
  for name in changed:
    text = texts[name]
    files.atomic_write(os.path.join(workdir, name), lambda f, t=text: f.write(t.encode('utf-8')))
  files.write_json(path, {**saved, **{name: [new[name]] for name in texts}}, sort_keys=True)
