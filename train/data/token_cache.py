"""The token cache of text corpora: a corpus encoded once, memory-mapped by every later run.

An entry is `text_<key>.npy`, the ids of every file the corpus reads, one file after another,
and `text_<key>.json` beside it, which says what the entry holds (its spec, the splits' bounds
and the vocabulary), in `config.data.cache_dir` or else the project's cache directory
(lstm/cache.py: $STACKED_LSTM_CACHE or ~/.cache/stacked_lstm). The key is a hash of the spec: the
files' fingerprints (fingerprint.py) and every config field that changes the ids (level,
encoding, max_vocab, the fractions cut for valid and test), so a changed file or field misses
the cache. Both files are written atomically, the .npy first. A later run maps the .npy
read-only (np.load(mmap_mode='r')): it starts in seconds, and its tokens are file pages that the
system can drop and read again rather than memory of the process. An entry that cannot be read,
or does not hold what its .json says, is rebuilt and never trusted; one that cannot be written
(a full or read-only disk) is reported and the run goes on without it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Dict, Optional

import numpy as np
from absl import logging

from lstm import cache
from train import faults, files
from train.data.corpus import STEP, Encoded
from train.data.vocab import Vocabulary, id_dtype

FORMAT = 1  # bump when the encoding changes what an entry holds


def _base(cache_dir: Optional[str], spec: Dict[str, Any]) -> str:
  """The entry's path without its suffix."""
  key = hashlib.sha256(json.dumps({**spec, 'format': FORMAT}, sort_keys=True).encode())
  return os.path.join(os.path.expanduser(cache_dir or cache.directory()),
                      f'text_{key.hexdigest()[:16]}')


def load(cache_dir: Optional[str], spec: Dict[str, Any]) -> Optional[Encoded]:
  """The corpus that `spec` describes, from the cache in `cache_dir` (None: the default); None
  when it is not there or cannot be trusted."""
  base = _base(cache_dir, spec)
  if not os.path.exists(base + '.json'):
    return None
  try:
    described = files.read_json(base + '.json')
    tokens = np.load(base + '.npy', mmap_mode='r', allow_pickle=False)
    problem = _problem(tokens, described, spec)
    if problem is None:
      logging.info('data: tokens mapped from the cache %s.npy', base)
      return Encoded(tokens, {name: (int(start), int(stop)) for name, (start, stop)
                              in described['splits'].items()},
                     Vocabulary.from_json(described['vocab']))
  except (OSError, ValueError, TypeError, KeyError) as e:
    problem = f'{type(e).__name__}: {e}'
  logging.warning('data: the token cache %s.npy is not usable (%s); encoding the text again',
                  base, problem)
  return None


def _problem(tokens: np.memmap, described: Any, spec: Dict[str, Any]) -> Optional[str]:
  """What is wrong with an entry, or None."""
  if not isinstance(described, dict) or described.get('spec') != spec:
    return 'its .json is unreadable or describes other data'
  size = len(described['vocab']['itos'])
  if tokens.shape != (described['length'],) or tokens.dtype != id_dtype(size):
    return (f'it holds {tokens.dtype} ids of shape {tokens.shape}, not {described["length"]} '
            f'{id_dtype(size)} ids')
  if _largest_id(tokens) >= size:
    return f'it holds ids outside the vocabulary of {size}'
  if not all(0 <= start <= stop <= len(tokens) for start, stop in described['splits'].values()):
    return 'its splits lie outside its tokens'
  return None


def _largest_id(tokens: np.memmap) -> int:
  """The largest of the mapped ids, read through the file: the pages that the check reads stay in
  the system's file cache, not in the memory of the process (training maps only those it uses)."""
  largest = 0
  piece = np.empty(STEP, tokens.dtype)
  with open(tokens.filename, 'rb') as f:
    f.seek(tokens.offset)
    while True:
      count = f.readinto(piece) // piece.itemsize
      if not count:
        return largest
      largest = max(largest, int(piece[:count].max()))


def store(cache_dir: Optional[str], spec: Dict[str, Any], encoded: Encoded) -> Encoded:
  """Writes `encoded` to the cache; returns it with its tokens mapped from there (or as it is
  when the cache cannot be written)."""
  base = _base(cache_dir, spec)
  described = {'spec': spec, 'length': len(encoded.tokens), 'splits': encoded.splits,
               'vocab': encoded.vocab.to_json()}
  try:
    files.atomic_write(base + '.npy', lambda f: np.save(f, encoded.tokens, allow_pickle=False))
    files.write_json(base + '.json', described)
    tokens = np.load(base + '.npy', mmap_mode='r', allow_pickle=False)
  except (OSError, faults.RunFault) as e:  # files' writes report a failed write as a RunFault
    logging.warning('data: could not write the token cache %s.npy (%s); going on without it',
                    base, e)
    return encoded
  logging.info('data: tokens cached in %s.npy', base)
  return dataclasses.replace(encoded, tokens=tokens)
