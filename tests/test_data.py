"""Tests for train/data.py: contents against the reference numbers, batch contents, resumption."""
import json
import math

import numpy as np
import pytest

from configs import common
from train import data


def config(dataset, **fields):
  """The default config for `dataset` with `fields` set in config.data (in the dataset's own
  sub-dict for generated datasets)."""
  c = common.base_config()
  c.dataset = dataset
  section = c.data[dataset] if dataset in c.data else c.data
  for key, value in fields.items():
    section[key] = value
  return c


def take(batcher, n):
  return [next(batcher) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def lm_dataset(n=1000):
  """A token stream whose ids are their own positions: contiguity is easy to check."""
  splits = {name: data.Split(tokens=np.arange(n, dtype=np.int32)) for name in data.SPLITS}
  return data.Dataset(name='toy', kind='lm', splits=splits, vocab_size=n, num_classes=n,
                      input_features=None, itos=[str(i) for i in range(n)])


def classify_dataset(n=103, steps=3):
  """Each example's features hold its index, so batches reveal which examples they contain."""
  inputs = np.repeat(np.arange(n, dtype=np.float32)[:, None, None], steps, axis=1)
  split = data.Split(inputs=inputs, targets=(np.arange(n) % 7).astype(np.int32))
  return data.Dataset(name='toy', kind='classify', splits={s: split for s in data.SPLITS},
                      vocab_size=None, num_classes=7, input_features=1, itos=None)


def example_ids(batch):
  return batch['inputs'][:, 0, 0].astype(int)


# ------------------------------------------------------------------------------------------------
# Penn Treebank


@pytest.fixture(scope='module')
def ptb_word():
  return data.load_dataset(config('ptb_word'))


@pytest.fixture(scope='module')
def ptb_char():
  return data.load_dataset(config('ptb_char'))


def test_ptb_word_matches_reference_counts(ptb_word):
  # The standard word-level PTB's sizes: train 929,589 tokens with <eos>, valid 73,760,
  # test 82,430; vocabulary 10,000.
  assert ptb_word.kind == 'lm'
  assert {k: v.tokens.size for k, v in ptb_word.splits.items()} == {
      'train': 929_589, 'valid': 73_760, 'test': 82_430}
  assert ptb_word.vocab_size == ptb_word.num_classes == len(ptb_word.itos) == 10_000
  assert ptb_word.input_features is None
  train = ptb_word.splits['train'].tokens
  eos = ptb_word.itos.index('<eos>')
  assert int((train == eos).sum()) == 42_068  # one per sentence; 887,521 words besides
  assert ptb_word.itos[0] == 'the' and '<unk>' in ptb_word.itos
  assert ' '.join(ptb_word.itos[i] for i in train[:3]) == 'aer banknote berlitz'
  for split in ptb_word.splits.values():
    assert split.tokens.dtype == np.uint16  # the smallest dtype that holds 10,000 ids
    assert split.tokens.min() >= 0 and split.tokens.max() < 10_000
  counts = np.bincount(train, minlength=10_000)
  assert np.all(np.diff(counts) <= 0)  # ids sorted by frequency


def test_ptb_char_vocab_covers_valid_and_test(ptb_char):
  assert ptb_char.vocab_size == len(ptb_char.itos) == 50
  assert ptb_char.itos == sorted(ptb_char.itos) and '\n' in ptb_char.itos
  assert '<unk>' not in ptb_char.itos  # no stand-in symbol needed: valid/test fully covered
  for split in ptb_char.splits.values():
    assert split.tokens.dtype == np.uint8
    assert split.tokens.min() >= 0 and split.tokens.max() < ptb_char.vocab_size
  text = ''.join(ptb_char.itos[i] for i in ptb_char.splits['valid'].tokens[:60])
  assert text.startswith('consumers may want to move their telephones')
  assert ptb_char.splits['train'].tokens.size > 5_000_000


def test_ptb_max_train_tokens_truncates_train_only():
  small = data.load_dataset(config('ptb_char', max_train_tokens=1000))
  assert small.splits['train'].tokens.size == 1000
  assert small.splits['valid'].tokens.size > 1000
  assert small.vocab_size == 50  # vocabulary still from the whole train split


# ------------------------------------------------------------------------------------------------
# Language-model batching


def test_lm_batches_are_contiguous_rows():
  b = data.Batcher(lm_dataset(1000), 'train', batch_size=4, bptt_length=7, seed=0, shuffle=True)
  row_len = 250
  assert b.batches_per_epoch() == (row_len - 1) // 7 == 35
  batches = take(b, 35)
  for i, batch in enumerate(batches):
    assert batch['inputs'].shape == batch['targets'].shape == (4, 7)
    assert batch['inputs'].dtype == batch['targets'].dtype == np.int32
    expected = np.arange(4)[:, None] * row_len + i * 7 + np.arange(7)
    np.testing.assert_array_equal(batch['inputs'], expected)  # not shuffled, even with shuffle=True
    np.testing.assert_array_equal(batch['targets'], batch['inputs'] + 1)
    np.testing.assert_array_equal(batch['targets'][:, :-1], batch['inputs'][:, 1:])
  for prev, nxt in zip(batches, batches[1:]):  # each row continues where the last batch stopped
    np.testing.assert_array_equal(nxt['inputs'][:, 0], prev['targets'][:, -1])
  # The next epoch starts over at the beginning of the rows.
  np.testing.assert_array_equal(next(b)['inputs'], batches[0]['inputs'])
  assert b.state() == {'epoch': 1, 'position': 1}


def test_lm_eval_pass_includes_short_last_batch():
  b = data.Batcher(lm_dataset(1000), 'valid', batch_size=4, bptt_length=7, seed=0, shuffle=False,
                   drop_remainder=False)
  batches = list(b.epoch_batches())
  assert len(batches) == b.batches_per_epoch() == 36
  assert batches[-1]['inputs'].shape == (4, 249 - 35 * 7)
  targets = np.concatenate([x['targets'] for x in batches], axis=1)
  np.testing.assert_array_equal(targets, np.arange(1000).reshape(4, 250)[:, 1:])
  assert b.state() == {'epoch': 0, 'position': 0}


def test_lm_on_real_ptb_follows_the_stream(ptb_word):
  b = data.Batcher(ptb_word, 'train', batch_size=20, bptt_length=35, seed=0, shuffle=False)
  row_len = 929_589 // 20
  assert b.batches_per_epoch() == (row_len - 1) // 35
  first, second = take(b, 2)
  stream = ptb_word.splits['train'].tokens
  np.testing.assert_array_equal(first['inputs'][3], stream[3 * row_len:3 * row_len + 35])
  np.testing.assert_array_equal(second['targets'][3], stream[3 * row_len + 36:3 * row_len + 71])


def test_lm_resume_reproduces_next_batches():
  ds = lm_dataset(1000)
  a = data.Batcher(ds, 'train', batch_size=4, bptt_length=7, seed=3, shuffle=False)
  take(a, 33)  # close to the epoch boundary, so the continuation crosses it
  state = json.loads(json.dumps(a.state()))
  assert all(type(v) is int for v in state.values())
  b = data.Batcher(ds, 'train', batch_size=4, bptt_length=7, seed=3, shuffle=False)
  b.restore(state)
  assert_batches_equal(take(b, 5), take(a, 5))
  assert a.state() == b.state() == {'epoch': 1, 'position': 3}


# ------------------------------------------------------------------------------------------------
# Example batching (classify / per_step / regress)


def test_classify_shuffle_is_seeded_and_differs_between_epochs():
  ds = classify_dataset(103)
  b = data.Batcher(ds, 'train', batch_size=10, bptt_length=None, seed=1, shuffle=True)
  assert b.batches_per_epoch() == 10
  epochs = [np.concatenate([example_ids(x) for x in take(b, 10)]) for _ in range(2)]
  for ids in epochs:
    assert len(set(ids)) == 100  # no repeats inside an epoch (3 dropped as the remainder)
  assert not np.array_equal(epochs[0], epochs[1])
  same = data.Batcher(ds, 'train', batch_size=10, bptt_length=None, seed=1, shuffle=True)
  np.testing.assert_array_equal(np.concatenate([example_ids(x) for x in take(same, 10)]), epochs[0])
  other = data.Batcher(ds, 'train', batch_size=10, bptt_length=None, seed=2, shuffle=True)
  assert not np.array_equal(np.concatenate([example_ids(x) for x in take(other, 10)]), epochs[0])
  plain = data.Batcher(ds, 'train', batch_size=10, bptt_length=None, seed=1, shuffle=False)
  np.testing.assert_array_equal(example_ids(next(plain)), np.arange(10))


def test_classify_batch_fields():
  ds = data.load_dataset(config('digits'))
  batch = next(data.Batcher(ds, 'train', batch_size=16, bptt_length=None, seed=0, shuffle=True))
  assert sorted(batch) == ['inputs', 'labels', 'lengths', 'valid']
  assert batch['inputs'].shape == (16, 8, 8) and batch['inputs'].dtype == np.float32
  assert batch['labels'].shape == (16,) and batch['labels'].dtype == np.int32
  np.testing.assert_array_equal(batch['lengths'], np.full(16, 8, np.int32))
  assert batch['lengths'].dtype == np.int32
  np.testing.assert_array_equal(batch['valid'], np.ones(16, np.float32))


def test_classify_resume_reproduces_next_batches():
  ds = classify_dataset(103)
  a = data.Batcher(ds, 'train', batch_size=10, bptt_length=None, seed=5, shuffle=True)
  take(a, 17)
  b = data.Batcher(ds, 'train', batch_size=10, bptt_length=None, seed=5, shuffle=True)
  b.restore(json.loads(json.dumps(a.state())))
  assert_batches_equal(take(b, 12), take(a, 12))  # crosses into a third epoch


def test_restore_rejects_out_of_range_state():
  b = data.Batcher(classify_dataset(103), 'train', batch_size=10, bptt_length=None, seed=0,
                   shuffle=True)
  with pytest.raises(ValueError, match='out of range'):
    b.restore({'epoch': 0, 'position': 11})


def test_eval_pass_covers_every_example_once():
  ds = classify_dataset(103)
  b = data.Batcher(ds, 'test', batch_size=10, bptt_length=None, seed=0, shuffle=False,
                   drop_remainder=False)
  assert b.batches_per_epoch() == 11
  for _ in range(2):  # epoch_batches() is repeatable: it leaves the state alone
    batches = list(b.epoch_batches())
    assert len(batches) == 11 and b.state() == {'epoch': 0, 'position': 0}
    assert all(x['inputs'].shape == (10, 3, 1) for x in batches)
    valid = np.concatenate([x['valid'] for x in batches])
    assert valid.dtype == np.float32 and valid.sum() == 103 and np.all(valid[103:] == 0)
    ids = np.concatenate([example_ids(x) for x in batches])[valid == 1]
    np.testing.assert_array_equal(np.sort(ids), np.arange(103))
  # Also when shuffled, and for a split smaller than one batch.
  shuffled = data.Batcher(ds, 'test', batch_size=10, bptt_length=None, seed=4, shuffle=True,
                          drop_remainder=False)
  ids = [example_ids(x)[x['valid'] == 1] for x in shuffled.epoch_batches()]
  np.testing.assert_array_equal(np.sort(np.concatenate(ids)), np.arange(103))
  tiny = data.Batcher(ds, 'test', batch_size=500, bptt_length=None, seed=0, shuffle=False,
                      drop_remainder=False)
  (only,) = list(tiny.epoch_batches())
  assert only['inputs'].shape[0] == 500 and only['valid'].sum() == 103


# ------------------------------------------------------------------------------------------------
# Synthetic datasets


def test_copy_task_structure_and_baseline():
  ds = data.load_dataset(config('copy', delay=30, num_train=64, num_valid=8, num_test=8, seed=3))
  assert ds.kind == 'per_step' and ds.vocab_size == 10 and ds.num_classes == 10
  split = ds.splits['train']
  length = 30 + 20
  assert split.inputs.shape == split.targets.shape == split.weights.shape == (64, length)
  symbols = split.inputs[:, :10]
  assert symbols.min() >= 0 and symbols.max() <= 7
  np.testing.assert_array_equal(split.inputs[:, 10:39], 8)        # delay-1 blanks
  np.testing.assert_array_equal(split.inputs[:, 39], 9)           # delimiter
  np.testing.assert_array_equal(split.inputs[:, 40:], 8)          # blanks while recalling
  np.testing.assert_array_equal(split.targets[:, :40], 8)
  np.testing.assert_array_equal(split.targets[:, 40:], symbols)   # recall the data
  np.testing.assert_array_equal(split.weights, 1.0)
  assert math.isclose(data.copy_baseline(30), 10 * math.log(8) / 50)
  # The memoryless strategy scores exactly the baseline on this data.
  probs = np.where(split.targets == 8, 1.0, 0.0)
  probs[:, 40:] = 1 / 8
  assert math.isclose(float(-np.log(probs).mean()), data.copy_baseline(30), rel_tol=1e-12)
  batch = next(data.Batcher(ds, 'train', batch_size=16, bptt_length=None, seed=0, shuffle=True))
  assert sorted(batch) == ['inputs', 'targets', 'valid', 'weights']
  assert batch['weights'].dtype == np.float32 and batch['targets'].shape == (16, length)
  # Seeded: same seed same data; splits differ from each other.
  again = data.load_dataset(config('copy', delay=30, num_train=64, num_valid=8, num_test=8, seed=3))
  np.testing.assert_array_equal(again.splits['train'].inputs, split.inputs)
  assert not np.array_equal(ds.splits['valid'].inputs, ds.splits['test'].inputs)
  recall = data.load_dataset(config('copy', delay=30, num_train=4, loss_on_recall_only=True))
  np.testing.assert_array_equal(recall.splits['train'].weights.sum(axis=1), 10)
  np.testing.assert_array_equal(recall.splits['train'].weights[:, 40:], 1.0)


def test_adding_problem_markers_and_targets():
  ds = data.load_dataset(config('adding', seq_len=50, num_train=2000, num_valid=10, num_test=10))
  assert ds.kind == 'regress' and ds.input_features == 2 and ds.num_classes is None
  split = ds.splits['train']
  assert split.inputs.shape == (2000, 50, 2) and split.inputs.dtype == np.float32
  values, markers = split.inputs[..., 0], split.inputs[..., 1]
  assert values.min() >= 0 and values.max() <= 1
  assert set(np.unique(markers)) == {0.0, 1.0}
  np.testing.assert_array_equal(markers[:, :25].sum(axis=1), 1)
  np.testing.assert_array_equal(markers[:, 25:].sum(axis=1), 1)
  np.testing.assert_allclose(split.targets, (values * markers).sum(axis=1), rtol=1e-6)
  assert split.targets.dtype == np.float32
  # Predicting 1 everywhere gives about the documented baseline MSE (2/12).
  assert abs(float(((split.targets - 1.0) ** 2).mean()) - data.ADDING_BASELINE_MSE) < 0.015
  batch = next(data.Batcher(ds, 'train', batch_size=8, bptt_length=None, seed=0, shuffle=True))
  assert sorted(batch) == ['inputs', 'targets', 'valid']
  assert batch['inputs'].shape == (8, 50, 2) and batch['targets'].shape == (8,)
  # Changing num_train leaves valid unchanged (each split has its own random stream).
  more = data.load_dataset(config('adding', seq_len=50, num_train=100, num_valid=10, num_test=10))
  np.testing.assert_array_equal(more.splits['valid'].inputs, ds.splits['valid'].inputs)
  default = data.load_dataset(config('adding', num_train=1, num_valid=1, num_test=1))
  assert default.splits['test'].inputs.shape == (1, 100, 2)


def test_digits_splits():
  ds = data.load_dataset(config('digits'))
  sizes = {k: v.inputs.shape[0] for k, v in ds.splits.items()}
  assert sizes == {'train': 1297, 'valid': 250, 'test': 250}
  assert ds.input_features == 8 and ds.num_classes == 10 and ds.vocab_size is None
  x = np.concatenate([v.inputs for v in ds.splits.values()])
  assert x.shape[1:] == (8, 8) and x.min() == 0.0 and x.max() == 1.0
  again = data.load_dataset(config('digits'))
  np.testing.assert_array_equal(again.splits['test'].targets, ds.splits['test'].targets)
  assert set(ds.splits['train'].targets) == set(range(10))


def test_mnist1d_is_generated_locally(monkeypatch):
  import mnist1d.data

  def no_download(*args, **kwargs):
    raise AssertionError('mnist1d tried to download')

  monkeypatch.setattr(mnist1d.data.requests, 'get', no_download)
  state = np.random.get_state()
  ds = data.load_dataset(config('mnist1d'))
  assert np.array_equal(np.random.get_state()[1], state[1])  # global RNG left as it was
  assert ds.kind == 'classify' and ds.num_classes == 10 and ds.input_features == 1
  assert {k: v.inputs.shape for k, v in ds.splits.items()} == {
      'train': (3500, 40, 1), 'valid': (500, 40, 1), 'test': (1000, 40, 1)}
  assert ds.splits['train'].inputs.dtype == np.float32
  assert set(ds.splits['test'].targets) == set(range(10))
  again = data.load_dataset(config('mnist1d', valid_size=100))
  np.testing.assert_array_equal(again.splits['test'].inputs, ds.splits['test'].inputs)
  assert again.splits['train'].inputs.shape[0] == 3900


# ------------------------------------------------------------------------------------------------
# Plain-text files


def test_text_char_level_with_fractions(tmp_path):
  path = tmp_path / 'corpus.txt'
  text = ''.join(f'line {i} of the corpus\n' for i in range(100))
  path.write_text(text)
  ds = data.load_dataset(config('text', path=str(path)))
  assert ds.name == 'text' and ds.kind == 'lm'
  n = len(text)
  sizes = {k: v.tokens.size for k, v in ds.splits.items()}
  assert sizes['test'] == sizes['valid'] == round(0.05 * n)  # fractions of the whole file
  assert sum(sizes.values()) == n
  decoded = ''.join(ds.itos[i] if ds.itos[i] != '<unk>' else '?'
                    for k in data.SPLITS for i in ds.splits[k].tokens)
  assert decoded == text  # the splits are consecutive pieces: train, valid, test
  assert ds.itos == sorted(ds.itos)


def test_text_word_level_and_separate_files(tmp_path):
  train, valid = tmp_path / 'train.txt', tmp_path / 'valid.txt'
  train.write_text('a b a\n\nc a b\n')
  valid.write_text('a z\n')
  ds = data.load_dataset(config('text', path=str(train), valid_path=str(valid), level='word',
                                test_fraction=0.25))
  assert ds.itos[:4] == ['a', '<eos>', 'b', 'c']  # by frequency, then alphabetically
  words = lambda split: [ds.itos[i] for i in ds.splits[split].tokens]
  assert words('train') == ['a', 'b', 'a', '<eos>', 'c', 'a']
  assert words('test') == ['b', '<eos>']
  assert words('valid') == ['a', '<unk>', '<eos>']  # unseen word


def test_text_unseen_characters_map_to_unk(tmp_path):
  train, test = tmp_path / 'train.txt', tmp_path / 'test.txt'
  train.write_text('abcabcabc' * 10)
  test.write_text('abd')
  ds = data.load_dataset(config('text', path=str(train), test_path=str(test)))
  assert ds.itos == ['a', 'b', 'c', '<unk>']
  np.testing.assert_array_equal(ds.splits['test'].tokens, [0, 1, 3])


def test_text_byte_level(tmp_path):
  path = tmp_path / 'bytes.bin'
  path.write_bytes(bytes(range(256)) * 4)
  ds = data.load_dataset(config('text', path=str(path), level='byte'))
  assert ds.vocab_size == 256
  np.testing.assert_array_equal(ds.splits['train'].tokens[:256], np.arange(256))


@pytest.mark.parametrize('case, problem', [
    ('missing', 'does not exist'), ('directory', 'is a directory'), ('empty', 'is empty'),
    ('blank', 'is empty'),
])
def test_text_errors_name_the_path(tmp_path, case, problem):
  path = {'missing': tmp_path / 'missing.txt', 'directory': tmp_path}.get(case, tmp_path / 'f.txt')
  if case in ('empty', 'blank'):
    path.write_text('' if case == 'empty' else ' \n\n')
  with pytest.raises(ValueError) as info:
    data.load_dataset(config('text', path=str(path)))
  message = str(info.value)
  assert message.startswith(f'config.data.path={str(path)!r} {problem}')
  assert '\n' not in message


def test_text_without_path_or_with_bad_separate_file(tmp_path):
  with pytest.raises(ValueError, match=r"config.dataset='text' needs config.data.path"):
    data.load_dataset(config('text'))
  good = tmp_path / 'train.txt'
  good.write_text('some text here\n' * 10)
  with pytest.raises(ValueError, match=r'config.data.valid_path=.* does not exist'):
    data.load_dataset(config('text', path=str(good), valid_path=str(tmp_path / 'nope.txt')))


# ------------------------------------------------------------------------------------------------
# Errors


def test_unknown_dataset_lists_valid_names():
  with pytest.raises(ValueError) as info:
    data.load_dataset(config('imagenet'))
  message = str(info.value)
  assert "config.dataset='imagenet'" in message and '\n' not in message
  for name in data.DATASETS:
    assert name in message
  assert set(data.DATASETS) == {'ptb_char', 'ptb_word', 'text', 'mnist1d', 'digits', 'copy',
                                'adding', 'speech_digits'}


def test_oversize_batch_errors_name_batch_size_and_split_size():
  with pytest.raises(ValueError, match=r'config.batch_size=200 is larger .*103 examples'):
    data.Batcher(classify_dataset(103), 'train', batch_size=200, bptt_length=None, seed=0,
                 shuffle=True)
  with pytest.raises(ValueError, match=r'config.batch_size=100 is too large .*1000 tokens'):
    data.Batcher(lm_dataset(1000), 'train', batch_size=100, bptt_length=10, seed=0, shuffle=False)


@pytest.mark.parametrize('batch_size, bptt_length, match', [
    (0, 5, 'config.batch_size=0'), (-3, 5, 'config.batch_size=-3'),
    (4, 0, 'config.bptt_length=0'), (4, -1, 'config.bptt_length=-1'),
    (4, None, 'config.bptt_length is required'),
])
def test_bad_batch_size_or_bptt_length(batch_size, bptt_length, match):
  with pytest.raises(ValueError, match=match):
    data.Batcher(lm_dataset(1000), 'train', batch_size=batch_size, bptt_length=bptt_length, seed=0,
                 shuffle=False)


def test_describe_is_one_line(ptb_word):
  assert ptb_word.describe() == ('ptb_word (lm): vocab 10000; train 929589, valid 73760, '
                                 'test 82430 tokens')


def test_lm_with_reverse_cuts_the_reversed_stream_the_same_way():
  stream = np.arange(1000, dtype=np.int32)
  ds = data.Dataset(name='t', kind='lm', splits={'train': data.Split(tokens=stream)},
                    vocab_size=1000, num_classes=1000, input_features=None, itos=None)
  b = data.Batcher(ds, 'train', 4, 10, 0, shuffle=False, with_reverse=True)
  first, second = next(b), next(b)
  rows_rev = stream[::-1].reshape(4, 250)
  np.testing.assert_array_equal(first['inputs_rev'], rows_rev[:, :10])
  np.testing.assert_array_equal(first['targets_rev'], rows_rev[:, 1:11])
  np.testing.assert_array_equal(second['inputs_rev'], rows_rev[:, 10:20])
  np.testing.assert_array_equal(first['inputs'], stream.reshape(4, 250)[:, :10])


# ------------------------------------------------------------------------------------------------
# Documents


def test_document_separator_marks_where_each_document_begins(tmp_path):
  path = tmp_path / 'docs.txt'
  docs = ['first doc here', 'second one', 'the third document']
  path.write_text('\n\n'.join(docs * 20) + '\n')
  ds = data.load_dataset(config('text', path=str(path), document_separator='\n\n'))
  split = ds.splits['train']
  text = ''.join(ds.itos[i] for i in split.tokens)
  expected = np.zeros(len(text), bool)
  expected[0] = True
  i = text.find('\n\n')
  while i >= 0:
    if i + 2 < len(text):
      expected[i + 2] = True
    i = text.find('\n\n', i + 1)
  np.testing.assert_array_equal(split.starts, expected)
  assert split.starts.sum() > 20
  # the batches carry the marks of their inputs, and of the reversed stream for a biLM
  b = data.Batcher(ds, 'train', batch_size=2, bptt_length=7, seed=0, shuffle=False,
                   with_reverse=True)
  rows = split.tokens[:len(split.tokens) // 2 * 2].reshape(2, -1)
  marks = split.starts[:rows.size].reshape(2, -1)
  for position in range(3):
    batch = next(b)
    np.testing.assert_array_equal(batch['segment_starts'], marks[:, 7 * position:7 * position + 7])
    np.testing.assert_array_equal(batch['inputs'], rows[:, 7 * position:7 * position + 7])
  reversed_text = text[::-1]
  backward = np.flatnonzero(split.starts_rev)
  assert backward[0] == 0 and len(backward) == len(np.flatnonzero(split.starts))
  for j in backward[1:]:  # reading backwards, a document begins right after '\n\n'
    assert reversed_text[j - 2:j] == '\n\n' and reversed_text[j] != '\n'
  rows_rev = split.starts_rev[:rows.size].reshape(2, -1)
  b = data.Batcher(ds, 'train', batch_size=2, bptt_length=7, seed=0, shuffle=False,
                   with_reverse=True)
  np.testing.assert_array_equal(next(b)['segment_starts_rev'], rows_rev[:, :7])
  # word level: the separator is a word
  words_path = tmp_path / 'words.txt'
  words_path.write_text(' <doc> '.join(['a b c', 'd e', 'f g h i']) + '\n')
  wds = data.load_dataset(config('text', path=str(words_path), level='word',
                                 document_separator='<doc>', valid_fraction=0.2,
                                 test_fraction=0.2))
  tokens = [wds.itos[i] for i in wds.splits['train'].tokens]
  starts = wds.splits['train'].starts
  assert [t for t, s in zip(tokens, starts) if s] == [tokens[0]] + [
      tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t == '<doc>']


def test_unknown_document_separator_is_one_line(tmp_path):
  path = tmp_path / 'docs.txt'
  path.write_text('abc\nabc\n' * 50)
  with pytest.raises(ValueError, match=r"config.data.document_separator='#' is not in the "
                                       'vocabulary'):
    data.load_dataset(config('text', path=str(path), document_separator='#'))
