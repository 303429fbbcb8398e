"""`Batcher`: a deterministic, resumable iterator over one split of a `Dataset`.

Batch order depends only on (seed, epoch, position), and `Batcher.state()` is a dict of plain
ints, so a run restored from a checkpoint sees exactly the batches it would have seen.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, Mapping, Optional

import numpy as np

from train import objectives
from train.data.dataset import Dataset


class Batcher:
  """Deterministic, resumable iterator over one split.

  Token streams: the stream is cut into `batch_size` contiguous rows; batch i is
  rows[:, i*T:(i+1)*T] with the targets one step ahead, as int32 whatever the stream's dtype (the
  rows are views of the stream, never a copy of it). Never shuffled (`shuffle` is ignored: the
  trainer carries state across batches); every epoch restarts at batch 0. The last
  len % batch_size tokens are not used.
  `with_reverse` adds 'inputs_rev' / 'targets_rev', the same cut of the reversed stream, for a
  backward language model that carries its own state (ELMo's biLM).
  Example datasets: the batch holds `fields` (batch key -> Split field; by default the objective's
  `batch_fields`), in the order of a permutation seeded by (seed, epoch) when `shuffle`, else
  in order. Every batch has 'valid' (B,) float32: 1 for real examples, 0 for padding; with
  drop_remainder=False the last batch is padded (with copies of the split's first example) to
  batch_size; with drop_remainder=True the last N % batch_size examples of each epoch are skipped.

  Iterating loops forever over epochs (the epoch counter advances); `epoch_batches()` gives one pass
  for evaluation and leaves the state alone. `state()` / `restore()` are plain ints.
  """

  def __init__(self, dataset: Dataset, split: str, batch_size: int, bptt_length: Optional[int],
               seed: int, shuffle: bool, drop_remainder: bool = True,
               with_reverse: bool = False, fields: Optional[Mapping[str, str]] = None):
    if split not in dataset.splits:
      raise ValueError(f'split {split!r} is not one of {sorted(dataset.splits)} of {dataset.name}')
    if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
      raise ValueError(f'config.batch_size={batch_size!r} must be a positive integer')
    if bptt_length is not None and (not isinstance(bptt_length, (int, np.integer))
                                    or bptt_length <= 0):
      raise ValueError(f'config.bptt_length={bptt_length!r} must be a positive integer')
    self.dataset, self.split, self.stream = dataset, split, dataset.is_stream
    self.batch_size, self.bptt_length = int(batch_size), bptt_length
    self.seed, self.shuffle, self.drop_remainder = int(seed), bool(shuffle), bool(drop_remainder)
    self._epoch, self._position = 0, 0
    self._perm_cache = (None, None)
    data = dataset.splits[split]
    where = f'the {split!r} split of {dataset.name}'
    if self.stream:
      if bptt_length is None:
        raise ValueError(f'{dataset.name} is a language-model dataset: config.bptt_length is '
                         'required')
      tokens = data.tokens  # in its own dtype (uint8 / uint16...); batches are int32
      row_len = len(tokens) // self.batch_size
      need = self.bptt_length + 1 if drop_remainder else 2
      if row_len < need:
        raise ValueError(f'config.batch_size={self.batch_size} is too large for {where} '
                         f'({len(tokens)} tokens): rows of {row_len} tokens, need at least {need} '
                         f'(config.bptt_length={self.bptt_length})')
      self._rows = tokens[:row_len * self.batch_size].reshape(self.batch_size, row_len)
      # The reversed stream, cut the same way, for a backward language model (ELMo's biLM).
      self._starts = None if data.starts is None else self._cut(data.starts, row_len)
      self._starts_rev = (None if data.starts_rev is None or not with_reverse
                          else self._cut(data.starts_rev, row_len))
      self._rows_rev = (tokens[::-1][:row_len * self.batch_size].reshape(self.batch_size, row_len)
                        if with_reverse else None)
      full, rest = divmod(row_len - 1, self.bptt_length)
      self._num_batches = full + (1 if rest and not drop_remainder else 0)
    else:
      self._size = data.size
      self._fields = {}
      if fields is None:
        fields = objectives.OBJECTIVES[dataset.kind].batch_fields
      for key, attr in fields.items():
        value = getattr(data, attr)
        if key == 'lengths' and value is None:  # all sequences full length
          value = np.full((self._size,), data.inputs.shape[1], np.int32)
        self._fields[key] = value
      if drop_remainder and self._size < self.batch_size:
        raise ValueError(f'config.batch_size={self.batch_size} is larger than {where} '
                         f'({self._size} examples); lower config.batch_size')
      self._num_batches = (self._size // self.batch_size if drop_remainder
                           else -(-self._size // self.batch_size))

  def _cut(self, stream: np.ndarray, row_len: int) -> np.ndarray:
    return stream[:row_len * self.batch_size].reshape(self.batch_size, row_len)

  def batches_per_epoch(self) -> int:
    return self._num_batches

  def batch_shape(self) -> tuple[int, int]:
    """(rows, time steps) of a batch's inputs."""
    if self.stream:
      return self.batch_size, self.bptt_length
    return self.batch_size, self._fields['inputs'].shape[1]

  def state(self) -> Dict[str, int]:
    return {'epoch': int(self._epoch), 'position': int(self._position)}

  def restore(self, state: Mapping[str, Any]) -> None:
    epoch, position = int(state['epoch']), int(state['position'])
    if epoch < 0 or not 0 <= position <= self._num_batches:
      raise ValueError(f'batcher state {dict(state)} is out of range for {self._num_batches} '
                       f'batches per epoch of {self.split!r}')
    self._epoch, self._position = epoch, position

  def __iter__(self) -> 'Batcher':
    return self

  def __next__(self) -> Dict[str, np.ndarray]:
    if self._position >= self._num_batches:
      self._epoch, self._position = self._epoch + 1, 0
    batch = self._batch(self._epoch, self._position)
    self._position += 1
    return batch

  def epoch_batches(self) -> Iterator[Dict[str, np.ndarray]]:
    """Exactly one pass over the split (in the current epoch's order); does not change the state."""
    epoch = self._epoch
    for position in range(self._num_batches):
      yield self._batch(epoch, position)

  def _order(self, epoch: int) -> np.ndarray:
    if not self.shuffle:
      return np.arange(self._size)
    if self._perm_cache[0] != epoch:
      rng = np.random.default_rng([self.seed, epoch])
      self._perm_cache = (epoch, rng.permutation(self._size))
    return self._perm_cache[1]

  def _batch(self, epoch: int, position: int) -> Dict[str, np.ndarray]:
    if self.stream:
      start = position * self.bptt_length
      stop = min(start + self.bptt_length, self._rows.shape[1] - 1)
      batch = {'inputs': self._rows[:, start:stop].astype(np.int32),
               'targets': self._rows[:, start + 1:stop + 1].astype(np.int32)}
      if self._starts is not None:
        batch['segment_starts'] = np.ascontiguousarray(self._starts[:, start:stop])
      if self._starts_rev is not None:
        batch['segment_starts_rev'] = np.ascontiguousarray(self._starts_rev[:, start:stop])
      if self._rows_rev is not None:
        batch['inputs_rev'] = self._rows_rev[:, start:stop].astype(np.int32)
        batch['targets_rev'] = self._rows_rev[:, start + 1:stop + 1].astype(np.int32)
      return batch
    index = self._order(epoch)[position * self.batch_size:(position + 1) * self.batch_size]
    valid = np.ones((self.batch_size,), np.float32)
    if len(index) < self.batch_size:  # the padded last batch of a drop_remainder=False pass
      valid[len(index):] = 0.0
      index = np.concatenate([index, np.zeros(self.batch_size - len(index), index.dtype)])
    batch = {key: value[index] for key, value in self._fields.items()}
    batch['valid'] = valid
    return batch
