"""`Dataset` and `Split`: what every loader returns and the batcher reads."""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

import numpy as np

from train.data.vocab import Vocabulary

KINDS = ('lm', 'classify', 'per_step', 'regress', 'ctc')
SPLITS = ('train', 'valid', 'test')


@dataclasses.dataclass
class Split:
  """One split. lm: `tokens` only; other kinds: arrays with a leading example axis."""
  tokens: Optional[np.ndarray] = None   # lm: (N,) unsigned ids (`vocab.id_dtype`)
  inputs: Optional[np.ndarray] = None   # (N, T) int32 tokens or (N, T, F) float32
  targets: Optional[np.ndarray] = None  # classify (N,) int32; per_step (N, T) int32;
                                        # regress (N,) float32
  weights: Optional[np.ndarray] = None  # per_step: (N, T) float32, 1 where the loss counts
  lengths: Optional[np.ndarray] = None  # (N,) int32 valid lengths; None when all sequences are full
  starts: Optional[np.ndarray] = None   # lm: (N,) bool, True where a document begins; None: one
  starts_rev: Optional[np.ndarray] = None  # the same for the stream read backwards (tokens[::-1])

  @property
  def size(self) -> int:
    """Tokens (lm) or examples (other kinds)."""
    return len(self.tokens) if self.tokens is not None else len(self.inputs)


@dataclasses.dataclass
class Dataset:
  name: str                      # its name in train.data.DATASETS (config.dataset)
  kind: str                      # one of KINDS
  splits: Dict[str, Split]       # 'train' / 'valid' / 'test'
  vocab_size: Optional[int]      # token inputs: number of symbols; None for float inputs
  num_classes: Optional[int]     # output classes; None for regress
  input_features: Optional[int]  # float inputs: feature width; None for token inputs
  itos: Optional[List[str]]      # lm: id -> token string (for humans)
  level: Optional[str] = None    # lm: 'char', 'word' or 'byte'
  vocab: Optional[Vocabulary] = None  # lm: encodes text and decodes ids (`vocab.json`)
  data_files: Optional[Dict[str, dict]] = None  # files read: config.data field -> {'file',
                                                # 'size', 'sha256'} (data/fingerprint.py)

  @property
  def is_stream(self) -> bool:
    """True when each split is one token stream rather than a set of examples."""
    return self.splits['train'].tokens is not None

  def describe(self) -> str:
    """One line for logs, e.g.
    "ptb_word (lm): vocab 10000; train 929589, valid 73760, test 82430 tokens"."""
    unit = 'tokens' if self.is_stream else 'examples'
    sizes = ', '.join(f'{name} {split.size}' for name, split in self.splits.items())
    shape = []
    if self.vocab_size is not None:
      shape.append(f'vocab {self.vocab_size}')
    if self.input_features is not None:
      shape.append(f'{self.input_features} feature{"s" if self.input_features != 1 else ""}')
    if not self.is_stream:
      if self.num_classes is not None:
        shape.append(f'{self.num_classes} classes')
      shape.append(f'{self.splits["train"].inputs.shape[1]} steps')
    return f'{self.name} ({self.kind}): {", ".join(shape)}; {sizes} {unit}'


def readonly(array: np.ndarray) -> np.ndarray:
  array.setflags(write=False)  # loaders cache their arrays: nobody may change them in place
  return array

