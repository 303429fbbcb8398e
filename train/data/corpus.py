"""Text to token ids at corpus scale (a 1 GB file on a machine of a few GB), vectorised.

`encode_text` reads its sources a piece at a time (a file's decoded chunks) and gives each symbol
(a character, or a word) a provisional id (`CharIds`: vectorised; `WordIds`: a dict at C speed),
kept in `IdBlocks` in the smallest dtype that the symbols seen so far need. Once every source is
read, `cut` (which sees the sources' token counts) says where the splits are; the vocabulary is
chosen from the train split's counts as vocab.py defines it (characters sorted by code point;
words by frequency, then alphabetically, those beyond `max_vocab` read as '<unk>'; symbols unseen
in train read as '<unk>'), and the provisional ids are mapped to the vocabulary's ids, in the
smallest dtype that holds it (`vocab.id_dtype`), freeing each block once mapped. Resident memory
stays about one provisional id per token (1 or 2 bytes for characters, 2 or 4 for words).
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import mmap
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

import numpy as np

from train.data.dataset import SPLITS
from train.data.vocab import UNK, Vocabulary, codepoints, id_dtype, split_words

STEP = 1 << 20         # tokens handled at a time (numpy gathers and counts through int64 copies)
BLOCK_BYTES = 4 << 20  # of provisional ids, each block its own memory map (`_block`)

Piece = Tuple[str, int, int]          # (source, start, stop): a split's tokens in one source
Cut = Callable[[Dict[str, int]], Dict[str, Piece]]  # source -> token count, to split -> Piece


@dataclasses.dataclass
class Encoded:
  tokens: np.ndarray                  # every source's ids, one source after another
  splits: Dict[str, Tuple[int, int]]  # split -> (start, stop) in tokens
  vocab: Vocabulary

  def streams(self) -> Dict[str, np.ndarray]:
    return {name: self.tokens[start:stop] for name, (start, stop) in self.splits.items()}


def bounds(splits: Mapping[str, Piece], lengths: Mapping[str, int]) -> Dict[str, Tuple[int, int]]:
  """Each split's (start, stop) in the sources' tokens laid one after another (in the order of
  `lengths`)."""
  offsets = dict(zip(lengths, np.cumsum([0, *lengths.values()]).tolist()))
  return {name: (offsets[source] + start, offsets[source] + stop)
          for name, (source, start, stop) in splits.items()}


def steps(array: np.ndarray, start: int = 0, stop: Optional[int] = None) -> Iterator[np.ndarray]:
  """Views of array[start:stop], STEP tokens at a time."""
  stop = len(array) if stop is None else stop
  for i in range(start, stop, STEP):
    yield array[i:min(i + STEP, stop)]


class IdBlocks:
  """Provisional ids, appended a piece at a time, in blocks of BLOCK_BYTES."""

  def __init__(self):
    self._blocks: List[np.ndarray] = []
    self._used = 0  # ids in the last block
    self.length = 0

  def append(self, ids: np.ndarray) -> None:
    self.length += len(ids)
    while len(ids):
      if not self._blocks or self._used == len(self._blocks[-1]):
        self._blocks.append(_block(BLOCK_BYTES // ids.itemsize, ids.dtype))
        self._used = 0
      block = self._blocks[-1]
      if block.itemsize < ids.itemsize:  # the symbols outgrew the block's dtype
        block = self._blocks[-1] = _widened(block, self._used, ids.dtype)
      n = min(len(ids), len(block) - self._used)
      block[self._used:self._used + n] = ids[:n]
      self._used += n
      ids = ids[n:]

  def _filled(self) -> Iterator[np.ndarray]:
    for i, block in enumerate(self._blocks):
      yield block[:self._used] if i == len(self._blocks) - 1 else block

  def pieces(self, start: int, stop: int) -> Iterator[np.ndarray]:
    """The ids in [start, stop), STEP at a time."""
    offset = 0
    for block in self._filled():
      yield from steps(block, min(max(start - offset, 0), len(block)),
                       max(min(stop - offset, len(block)), 0))
      offset += len(block)

  def drain(self) -> Iterator[np.ndarray]:
    """Every id, STEP at a time; each block is freed once read."""
    while self._blocks:
      block = self._blocks.pop(0)
      yield from steps(block, 0, self._used if not self._blocks else len(block))


def _block(size: int, dtype: np.dtype) -> np.ndarray:
  """Room for `size` ids in an anonymous memory map of its own, which goes back to the system
  as soon as the block is freed (glibc keeps freed heap memory for reuse)."""
  return np.frombuffer(mmap.mmap(-1, size * np.dtype(dtype).itemsize), dtype)


def _widened(block: np.ndarray, used: int, dtype: np.dtype) -> np.ndarray:
  wider = _block(len(block), dtype)
  wider[:used] = block[:used]
  return wider


class CharIds:
  """Provisional ids of characters: an ASCII character's is its code point (ASCII text needs no
  lookup), another's 128 + its order of first appearance; `symbols`: the ids' code points."""

  def __init__(self):
    self._ids = np.full(0x110000, -1, np.int32)  # code point -> id
    self._ids[:128] = np.arange(128)
    self.symbols = np.arange(128, dtype=np.uint32)

  def __call__(self, text: str) -> np.ndarray:
    if text.isascii():
      return np.frombuffer(text.encode('ascii'), np.uint8).astype(id_dtype(len(self.symbols)))
    points = codepoints(text)
    other = points >= 128
    others = points[other]
    found = self._ids[others]
    if (found < 0).any():
      new = np.unique(others[found < 0])
      self._ids[new] = np.arange(len(self.symbols), len(self.symbols) + len(new))
      self.symbols = np.concatenate([self.symbols, new])
      found = self._ids[others]
    ids = points.astype(id_dtype(len(self.symbols)))  # right where ASCII; the others follow
    ids[other] = found
    return ids


class WordIds:
  """Provisional ids of words, in order of first appearance; `symbols`: the words."""

  def __init__(self):
    self.index: Dict[str, int] = collections.defaultdict(itertools.count().__next__)

  @property
  def symbols(self) -> List[str]:
    return list(self.index)

  def __call__(self, words: List[str]) -> np.ndarray:
    # a word not in the index yet gets the next id (the defaultdict's factory)
    ids = np.fromiter(map(self.index.__getitem__, words), np.uint32, count=len(words))
    return ids.astype(id_dtype(len(self.index)))


def _char_pieces(texts: Iterable[str]) -> Iterator[str]:
  for text in texts:
    for i in range(0, len(text), STEP):
      yield text[i:i + STEP]


def encode_text(level: str, sources: Mapping[str, Iterable[str]], cut: Cut, lines: bool = False,
                max_vocab: Optional[int] = None, strict: bool = False) -> Encoded:
  """The ids of `sources` (name -> its text, piece by piece) at 'char' or 'word' level, in the
  splits that `cut` lays out. `lines`: the character vocabulary's flag (the text is in PTB's
  line form already). `strict`: words of valid/test unseen in train raise instead of reading as
  '<unk>'."""
  table = CharIds() if level == 'char' else WordIds()
  ids = {}
  for name, texts in sources.items():
    ids[name] = IdBlocks()
    for piece in (_char_pieces(texts) if level == 'char' else split_words(texts)):
      ids[name].append(table(piece))
  lengths = {name: blocks.length for name, blocks in ids.items()}
  splits = cut(lengths)
  size = len(table.symbols)
  counts = {split: _counts(ids[source].pieces(start, stop), size)
            for split, (source, start, stop) in splits.items()}
  if level == 'char':
    vocab, mapping = _char_vocabulary(table.symbols, counts, lines)
  else:
    vocab, mapping = _word_vocabulary(table.index, counts, max_vocab, strict)
  return Encoded(_mapped(ids, mapping.astype(id_dtype(len(vocab)))), bounds(splits, lengths), vocab)


def _counts(pieces: Iterable[np.ndarray], size: int) -> np.ndarray:
  total = np.zeros(size, np.int64)
  for piece in pieces:
    found = np.bincount(piece)
    total[:len(found)] += found
  return total


def _mapped(ids: Mapping[str, IdBlocks], mapping: np.ndarray) -> np.ndarray:
  """The final ids of every source, one after another; the provisional blocks are freed."""
  tokens = np.empty(sum(blocks.length for blocks in ids.values()), mapping.dtype)
  position = 0
  for blocks in ids.values():
    for piece in blocks.drain():
      np.take(mapping, piece, out=tokens[position:position + len(piece)], mode='clip')
      position += len(piece)
  return tokens


def _char_vocabulary(points: np.ndarray, counts: Mapping[str, np.ndarray], lines: bool
                     ) -> Tuple[Vocabulary, np.ndarray]:
  """The train split's characters sorted by code point; '<unk>' added for valid/test's others.
  Returns the vocabulary and provisional id -> id."""
  in_train = np.flatnonzero(counts['train'])
  order = in_train[np.argsort(points[in_train])]
  itos = [chr(point) for point in points[order].tolist()]
  mapping = np.full(len(points), -1, np.int64)
  mapping[order] = np.arange(len(order))
  unseen = (mapping < 0) & (sum(counts.values()) > 0)  # characters of valid or test only
  if unseen.any():
    itos.append(UNK)
    mapping[unseen] = len(itos) - 1
  return Vocabulary(itos, 'char', lines), mapping.clip(0)  # (ASCII absent from the text: any id)


def _word_vocabulary(index: Mapping[str, int], counts: Mapping[str, np.ndarray],
                     max_vocab: Optional[int], strict: bool) -> Tuple[Vocabulary, np.ndarray]:
  """The train split's words by frequency (descending), then alphabetically; with `max_vocab`,
  rarer words read as '<unk>'; words of valid/test unseen in train read as '<unk>', or raise
  if `strict`. Returns the vocabulary and provisional id -> id."""
  words = list(index)
  train = counts['train']
  in_train = np.flatnonzero(train)
  itos = [word for _, word in sorted(zip((-train[in_train]).tolist(),
                                         [words[i] for i in in_train.tolist()]))]
  if max_vocab is not None and len(itos) > max_vocab:
    itos = itos[:max_vocab - 1] if UNK not in itos[:max_vocab] else itos[:max_vocab]
    if UNK not in itos:
      itos.append(UNK)
  mapping = np.full(len(words), -1, np.int64)
  in_text = [i for i, word in enumerate(itos) if word in index]  # all but an added '<unk>'
  mapping[[index[itos[i]] for i in in_text]] = in_text
  for split in SPLITS:
    unknown = np.flatnonzero((counts[split] > 0) & (mapping < 0))
    if len(unknown) and strict:
      raise ValueError(f'{len(unknown)} words of the {split!r} split are not in the train '
                       f'vocabulary, e.g. {sorted(words[i] for i in unknown.tolist())[:5]}')
    if len(unknown) and UNK not in itos:
      itos.append(UNK)
  if UNK in itos:
    mapping[mapping < 0] = itos.index(UNK)
  return Vocabulary(itos, 'word'), mapping
