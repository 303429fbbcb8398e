"""`train.load_run`: a trained run rebuilt from its workdir, without its data."""
import json
import os

import jax
import numpy as np
import pytest

import train
from train import data, models, run as run_lib
from train.evaluate import evaluate_run
from train.validation import ConfigError
from tests.trainer_utils import RUNS, read_metrics

pytestmark = pytest.mark.slow  # trains a run of every kind of dataset


def _results(workdir):
  with open(os.path.join(workdir, 'results.json')) as f:
    return json.load(f)


@pytest.mark.parametrize('name', list(RUNS))
def test_load_run_reproduces_the_final_validation_exactly(trained_run, name):
  workdir = trained_run(name)
  run = train.load_run(workdir)
  assert run.dataset.splits == {}  # rebuilt from dataset.json / vocab.json, not from the data
  assert run.step == _results(workdir)['step'] and run.checkpoint == 'checkpoints'
  assert evaluate_run(run, 'valid')['metrics'] == _results(workdir)['valid']


def test_load_run_needs_no_data(trained_run, monkeypatch):
  workdir = trained_run('char')

  def no_data(config):
    raise AssertionError('load_run read the data')
  monkeypatch.setattr(data, 'load_dataset', no_data)
  run = train.load_run(workdir)
  ids = run.vocab.encode('the market fell\n')
  logits, carry = run.model.apply({'params': run.params}, ids[None])
  assert logits.shape == (1, len(ids), len(run.vocab)) and len(carry) == 2
  assert np.all(np.isfinite(np.asarray(logits)))


@pytest.mark.parametrize('name', ['char', 'word', 'byte'])
def test_the_saved_vocabulary_is_the_data_s(trained_run, name):
  workdir = trained_run(name)
  run = train.load_run(workdir)
  rebuilt = data.load_dataset(run.config).vocab
  assert run.vocab == rebuilt and run.vocab.level == rebuilt.level
  text = 'the company said\nthe market fell\n'
  assert run.vocab.decode(run.vocab.encode(text)) == text


def test_best_is_the_lowest_validation(trained_run):
  workdir = trained_run('char')
  valid = [r for r in read_metrics(workdir) if r['split'] == 'valid']
  best_record = min(valid, key=lambda r: r['loss'])
  best = train.load_run(workdir, 'best')
  assert best.checkpoint == 'best' and best.step == best_record['step']
  expected = {k: v for k, v in best_record.items() if k not in ('step', 'split')}
  assert evaluate_run(best, 'valid')['metrics'] == expected
  assert _results(workdir)['best_valid'] == expected
  assert train.load_run(workdir, str(best.step)).step == best.step


def test_steps_by_number_and_errors(trained_run):
  workdir = trained_run('char')
  first = train.load_run(workdir, 6)  # an older checkpoint kept (keep_checkpoints=2: 6, 12)
  latest = train.load_run(workdir, 'latest')
  assert first.step == 6 and latest.step == 12
  assert not all(jax.tree.leaves(jax.tree.map(lambda a, b: np.array_equal(a, b), first.params,
                                              latest.params)))
  for step, match in [(7, 'has no checkpoint at step 7; saved steps: 6, 12'),
                      ('first', "step='first' is not best, latest or a step number")]:
    with pytest.raises(ConfigError, match=match) as info:
      train.load_run(workdir, step)
    assert '\n' not in str(info.value)
  with pytest.raises(ConfigError, match='no readable config.json'):
    train.load_run(os.path.dirname(workdir))


def test_bilm_directions(trained_run):
  run = train.load_run(trained_run('bilm'))
  assert isinstance(run.model, models.BiLanguageModel)
  tokens = run.vocab.encode('the company said\n')[None]
  (forward, backward), _ = run.model.apply({'params': run.params}, tokens, tokens[:, ::-1])
  for direction, expected in (('forward', forward), ('backward', backward)):
    model, params = run_lib.language_model(run, direction)
    assert type(model) is models.LanguageModel
    reversed_ = direction == 'backward'
    got, _ = model.apply({'params': params}, tokens[:, ::-1] if reversed_ else tokens)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
  with pytest.raises(ConfigError, match='not a language model'):
    run_lib.language_model(train.load_run(trained_run('classify')))
