"""End-to-end trainer tests on tiny settings, in temporary workdirs."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import data, models, optim, trainer
from train.validation import ConfigError
from tests.trainer_utils import read_metrics, tiny_config


@pytest.mark.parametrize('task, overrides, metric', [
    ('ptb_char', {}, 'bpc'),
    ('ptb_word', {'model.tie_embeddings': True, 'model.embed_size': 16}, 'perplexity'),
    ('ptb_word', {'model.bilm': True, 'model.proj_size': 8, 'model.cell_clip': 3.0,
                  'model.proj_clip': 3.0, 'model.residual': True, 'optimizer.name': 'adagrad',
                  'optimizer.learning_rate': 0.2}, 'perplexity_backward'),
    ('mnist1d', {'batch_size': 32, 'model.bidirectional': True}, 'accuracy'),
    ('digits', {'batch_size': 32, 'model.pooling': 'mean', 'model.between': 'layernorm'},
     'accuracy'),
    ('copy', {'batch_size': 32, 'model.num_layers': 1}, 'accuracy'),
    ('adding', {'batch_size': 32, 'model.num_layers': 1, 'model.residual': False}, 'loss'),
    ('speech_digits', {'batch_size': 16, 'model.bidirectional': True, 'model.peephole': True,
                       'optimizer.learning_rate': 3e-3}, 'label_error_rate'),
])
def test_every_task_trains_and_writes_results(tmp_path, monkeypatch, task, overrides, metric):
  monkeypatch.setenv('STACKED_LSTM_CACHE', str(tmp_path / 'cache'))
  config = tiny_config(task, **overrides)
  results = trainer.train_and_evaluate(config, str(tmp_path))
  assert results['status'] == 'completed' and results['step'] == 30
  records = read_metrics(tmp_path)
  train_losses = [r['loss'] for r in records if r['split'] == 'train']
  assert np.mean(train_losses[-2:]) < np.mean(train_losses[:2])
  assert {r['split'] for r in records} == {'train', 'valid', 'test'}
  saved = json.loads((tmp_path / 'results.json').read_text())
  assert metric in saved['valid'] and metric in saved['test']
  assert any(name.startswith('events') for name in os.listdir(tmp_path / 'tensorboard'))


def test_text_file_task(tmp_path):
  corpus = tmp_path / 'corpus.txt'
  corpus.write_text('the quick brown fox jumps over the lazy dog\n' * 400)
  config = tiny_config('text', **{'data.path': str(corpus)})
  results = trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['valid']['bpc'] < np.log2(28) - 0.5  # 28 symbols: uniform is 4.81 bits


def test_one_step_changes_every_parameter():
  config = tiny_config('ptb_char', **{'model.between': 'layernorm', 'model.num_layers': 3,
                                      'model.peephole': True})
  dataset = data.load_dataset(config)
  model = models.build_model(config, dataset)
  batch = next(data.Batcher(dataset, 'train', 8, 10, 0, False))
  batch = jax.tree.map(jnp.asarray, batch)
  params = model.init(jax.random.key(0), batch['inputs'])['params']
  schedule = optim.make_schedule(config.optimizer, 10, 30)
  tx = optim.make_optimizer(config.optimizer, schedule)
  carry = jax.eval_shape(lambda: model.apply({'params': params}, batch['inputs'])[1])
  carry = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), carry)
  state = trainer.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                             opt_state=tx.init(params), rng=jax.random.PRNGKey(0), carry=carry)
  step = jax.jit(trainer.make_train_step(model, 'lm', tx, schedule))
  new_state, metrics = step(state, batch, jnp.asarray(True))
  unchanged = [jax.tree_util.keystr(path) for path, a in jax.tree_util.tree_flatten_with_path(
      jax.tree.map(lambda a, b: bool(jnp.all(a == b)), params, new_state.params))[0] if a]
  assert not unchanged, f'parameters unchanged by one step: {unchanged}'
  assert np.isfinite(float(metrics['loss'])) and int(new_state.step) == 1


def test_resume_in_process_matches_uninterrupted(tmp_path):
  whole = trainer.train_and_evaluate(tiny_config('ptb_char', **{'model.dropout': 0.2}),
                                     str(tmp_path / 'whole'))
  first = trainer.train_and_evaluate(
      tiny_config('ptb_char', **{'model.dropout': 0.2, 'stop_after_steps': 12}),
      str(tmp_path / 'split'))
  assert first['status'] == 'preempted' and first['step'] == 12
  second = trainer.train_and_evaluate(tiny_config('ptb_char', **{'model.dropout': 0.2}),
                                      str(tmp_path / 'split'))
  assert second['steps_this_run'] == 18
  assert second['test'] == pytest.approx(whole['test'], rel=1e-6)
  steps = [r['step'] for r in read_metrics(tmp_path / 'split') if r['split'] == 'train']
  assert steps == sorted(set(steps))  # no duplicated records after the resume


def test_nan_is_caught_and_last_good_checkpoint_kept(tmp_path):
  config = tiny_config('ptb_char', **{'optimizer.name': 'sgd', 'optimizer.learning_rate': 1e30,
                                      'optimizer.grad_clip_norm': 0.0,
                                      'checkpoint_every_steps': 1, 'model.activation': 'linear'})
  with pytest.raises(trainer.NonFiniteLoss, match=r'at step (\d+).*last good checkpoint \(step'):
    trainer.train_and_evaluate(config, str(tmp_path))
  saved = json.loads((tmp_path / 'results.json').read_text())
  assert saved['status'] == 'diverged'
  bad_step = saved['step']
  steps = sorted(int(d) for d in os.listdir(tmp_path / 'checkpoints') if d.isdigit())
  assert steps and max(steps) == bad_step - 1


def test_conflicting_workdir_is_refused(tmp_path):
  trainer.train_and_evaluate(tiny_config('ptb_char', num_train_steps=5), str(tmp_path))
  with pytest.raises(ConfigError, match=r'different config \(model.num_layers: 2 -> 3'):
    trainer.train_and_evaluate(tiny_config('ptb_char', **{'model.num_layers': 3}), str(tmp_path))
  # a longer run of the same config resumes instead
  results = trainer.train_and_evaluate(tiny_config('ptb_char', num_train_steps=8), str(tmp_path))
  assert results['steps_this_run'] == 3


@pytest.mark.parametrize('overrides, match', [
    ({'task': 'imagenet'}, "config.task='imagenet' is not a known task; choose one of ptb_char"),
    ({'optimizer.name': 'adamax'}, "config.optimizer.name='adamax' is not known; use one of sgd"),
    ({'model.activation': 'rleu'}, "config.model: layer 0: activation='rleu' is not a known"),
    ({'model.between': 'softmax'}, "config.model: between='softmax' is not known"),
    ({'model.hidden_size': 0}, r'config.model.hidden_size=0 must be a positive integer'),
    ({'model.num_layers': -1}, r'config.model.num_layers=-1 must be a positive integer'),
    ({'num_train_steps': 0}, r'config.num_train_steps=0 must be a positive integer'),
    ({'batch_size': 0}, r'config.batch_size=0 must be a positive integer'),
    ({'task': 'digits', 'batch_size': 5000}, r'config.batch_size=5000 is larger than'),
    ({'batch_size': 6000}, r'config.batch_size=6000 is too large'),
    ({'optimizer.schedule': 'linear'}, "config.optimizer.schedule='linear' is not known"),
])
def test_bad_config_fails_before_compiling(tmp_path, monkeypatch, overrides, match):
  def no_jit(*a, **k):
    raise AssertionError('compiled before the config was checked')
  monkeypatch.setattr(trainer.jax, 'jit', no_jit)
  with pytest.raises(ConfigError, match=match) as info:
    overrides = dict(overrides)
    trainer.train_and_evaluate(tiny_config(overrides.pop('task', 'ptb_char'), **overrides),
                               str(tmp_path))
  assert '\n' not in str(info.value)
  assert not os.path.exists(tmp_path / 'checkpoints')


def test_missing_text_path_is_one_line(tmp_path):
  with pytest.raises(ConfigError, match=r"config.data.path='/nonexistent/x.txt' does not exist"):
    trainer.train_and_evaluate(tiny_config('text', **{'data.path': '/nonexistent/x.txt'}),
                               str(tmp_path))
