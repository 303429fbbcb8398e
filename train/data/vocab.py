"""`Vocabulary`: a language model's tokens, and text to ids and back.

One vocabulary per language-model run, saved as the workdir's `vocab.json`, so that text can be
encoded and samples decoded without the training data. The loaders (text.py, through corpus.py,
which encodes whole corpora a chunk at a time) follow the definitions here, so a file encoded
here gets exactly the ids its split gets in training.

Levels: 'char' (ids of characters; PTB's character text first has each non-blank line's words
joined by single spaces and ended by '\n', `lines=True`), 'word' (whitespace-split words, '<eos>'
closing every non-blank line) and 'byte' (the 256 byte values). A token outside the vocabulary is
'<unk>' when the vocabulary has it, and is dropped otherwise; `encode_counted` says how many.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np

EOS = '<eos>'
UNK = '<unk>'
LEVELS = ('char', 'word', 'byte')
LINE_BREAKS = '\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029'  # where str.splitlines() ends a line


def codepoints(text: str) -> np.ndarray:
  return np.frombuffer(text.encode('utf-32-le'), dtype=np.uint32)


def id_dtype(vocab_size: int) -> np.dtype:
  """The smallest unsigned integer dtype that holds the ids of a vocabulary of this size."""
  for dtype in (np.uint8, np.uint16):
    if vocab_size <= np.iinfo(dtype).max + 1:
      return np.dtype(dtype)
  return np.dtype(np.uint32)


def words(text: str) -> List[str]:
  """Whitespace-split words, '<eos>' closing every non-blank line (Mikolov/Zaremba PTB reader)."""
  return [word for piece in split_words([text]) for word in piece]


def split_words(texts: Iterable[str]) -> Iterator[List[str]]:
  """`words` of the text that `texts` hold one piece after another, cut anywhere (a file read in
  chunks): a list of words per piece, a word cut in two held back until its end arrives."""
  rest, line_open = '', False
  for text in texts:
    text = rest + text
    rest = '' if not text or text[-1].isspace() else text.rsplit(None, 1)[-1]
    found, line_open = _line_words(text[:len(text) - len(rest)], line_open)
    if found:
      yield found
  found, line_open = _line_words(rest, line_open)
  if line_open:
    found.append(EOS)
  if found:
    yield found


def _line_words(text: str, line_open: bool) -> tuple[List[str], bool]:
  """(words of `text` with '<eos>' after each line it closes, whether its last line, not closed
  by a line break, has words); `line_open`: the line that `text` continues has words."""
  found = []
  lines = text.splitlines()
  closed = len(lines) - (0 if text and text[-1] in LINE_BREAKS else 1)
  for i, line in enumerate(lines):
    line_words = line.split()
    if line_words:
      found.extend(line_words)
      line_open = True
    if i < closed and line_open:
      found.append(EOS)
      line_open = False
  return found, line_open


def joined_lines(text: str) -> str:
  """Each non-blank line's words joined by single spaces and ended by '\n' (PTB characters)."""
  return ''.join(' '.join(line.split()) + '\n' for line in text.splitlines() if line.strip())


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  itos: tuple = dataclasses.field(repr=False)  # id -> token (bytes shown as latin-1 characters)
  level: str           # 'char', 'word' or 'byte'
  lines: bool = False  # char level: text is first put in PTB's line form (`joined_lines`)
  encoding: str = 'utf-8'  # byte level: how str prompts become bytes and samples text

  def __post_init__(self):
    if self.level not in LEVELS:
      raise ValueError(f'vocabulary level {self.level!r} is not one of {", ".join(LEVELS)}')
    object.__setattr__(self, 'itos', tuple(self.itos))
    object.__setattr__(self, '_stoi', {s: i for i, s in enumerate(self.itos)})

  def __len__(self) -> int:
    return len(self.itos)

  @property
  def unk_id(self) -> Optional[int]:
    """The id unknown tokens get; None when they are dropped."""
    return self._stoi.get(UNK) if self.level != 'byte' else None

  @property
  def start_id(self) -> Optional[int]:
    """The line boundary ('<eos>' or '\n'), where a sample without a prompt starts."""
    return self._stoi.get(EOS if self.level == 'word' else '\n')

  def encode(self, text: Union[str, bytes, Sequence[str]]) -> np.ndarray:
    return self.encode_counted(text)[0]

  def encode_counted(self, text: Union[str, bytes, Sequence[str]]) -> tuple[np.ndarray, int]:
    """(int32 ids, number of tokens outside the vocabulary). `text` is a str, bytes (byte
    level) or, at word level, a list of words already split."""
    if self.level == 'byte':
      raw = text.encode(self.encoding) if isinstance(text, str) else bytes(text)
      return np.frombuffer(raw, dtype=np.uint8).astype(np.int32), 0
    if self.level == 'word':
      tokens = words(text) if isinstance(text, str) else list(text)
      ids = np.fromiter((self._stoi.get(w, -1) for w in tokens), np.int32, count=len(tokens))
    else:
      ids = self._char_ids(joined_lines(text) if self.lines else text)
    unknown = ids < 0
    if self.unk_id is not None:
      return np.where(unknown, self.unk_id, ids).astype(np.int32), int(unknown.sum())
    return ids[~unknown], int(unknown.sum())

  def encode_prompt(self, text: str) -> tuple[np.ndarray, int]:
    """As `encode_counted`, for text to continue: taken as it stands (not put in line form),
    and at word level with '<eos>' only where the text has a line break."""
    if self.level == 'word':
      tokens = words(text)
      if tokens and text.split('\n')[-1].strip():  # the last line is still open
        tokens = tokens[:-1]
      return self.encode_counted(tokens)
    if self.level == 'char' and self.lines:
      return dataclasses.replace(self, lines=False).encode_counted(text)
    return self.encode_counted(text)

  def _char_ids(self, text: str) -> np.ndarray:
    """Ids of the characters of `text`, -1 for those outside the vocabulary."""
    chars = [(ord(s), i) for i, s in enumerate(self.itos) if len(s) == 1]
    symbols = np.asarray([c for c, _ in chars], np.uint32)
    ids = np.asarray([i for _, i in chars], np.int32)
    cp = codepoints(text)
    if not len(symbols):
      return np.full(cp.shape, -1, np.int32)
    order = np.argsort(symbols)
    pos = np.searchsorted(symbols[order], cp).clip(0, len(symbols) - 1)
    return np.where(symbols[order][pos] == cp, ids[order][pos], -1).astype(np.int32)

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`: characters joined, words joined by spaces with '<eos>' as a line break,
    bytes decoded (undecodable ones as U+FFFD)."""
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    if self.level == 'byte':
      return bytes(ids).decode(self.encoding, errors='replace')
    if self.level == 'char':
      return ''.join(self.itos[i] for i in ids)
    out, line = [], []
    for i in ids:
      if self.itos[i] == EOS:
        out.append(' '.join(line) + '\n')
        line = []
      else:
        line.append(self.itos[i])
    return ''.join(out) + ' '.join(line)

  def to_json(self) -> dict[str, Any]:
    return {'level': self.level, 'itos': list(self.itos), 'unk': UNK if self.unk_id is not None
            else None, 'lines': self.lines, 'encoding': self.encoding}

  @classmethod
  def from_json(cls, value: dict[str, Any]) -> 'Vocabulary':
    return cls(itos=value['itos'], level=value['level'], lines=bool(value['lines']),
               encoding=value['encoding'])
