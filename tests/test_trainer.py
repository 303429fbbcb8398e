"""End-to-end trainer tests on tiny settings, in temporary workdirs."""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import data, objectives, optim, trainer
from train.validation import ConfigError
from tests.trainer_utils import read_metrics, tiny_config

pytestmark = pytest.mark.slow  # every test trains a run


@pytest.mark.parametrize('dataset, overrides, metric', [
    ('ptb_char', {}, 'bpc'),
    ('ptb_word', {'model.tie_embeddings': True, 'model.embed_size': 16}, 'perplexity'),
    ('ptb_word', {'model.bilm': True, 'model.proj_size': 8, 'model.cell_clip': 3.0,
                  'model.proj_clip': 3.0, 'model.block': 'residual_op_on_skip', 'optimizer.name': 'adagrad',
                  'optimizer.learning_rate': 0.2}, 'perplexity_backward'),
    ('mnist1d', {'batch_size': 32, 'model.bidirectional': True}, 'accuracy'),
    ('digits', {'batch_size': 32, 'model.pooling': 'mean', 'model.between': 'layernorm'},
     'accuracy'),
    ('copy', {'batch_size': 32, 'model.num_layers': 1}, 'accuracy'),
    ('adding', {'batch_size': 32, 'model.num_layers': 1, 'model.block': 'plain'}, 'loss'),
    ('speech_digits', {'batch_size': 16, 'model.bidirectional': True, 'model.peephole': True,
                       'optimizer.learning_rate': 3e-3}, 'label_error_rate'),
])
def test_every_dataset_trains_and_writes_results(tmp_path, monkeypatch, dataset, overrides, metric):
  monkeypatch.setenv('STACKED_LSTM_CACHE', str(tmp_path / 'cache'))
  config = tiny_config(dataset, **overrides)
  results = trainer.train_and_evaluate(config, str(tmp_path))
  assert results['status'] == 'completed' and results['step'] == 30
  records = read_metrics(tmp_path)
  train_losses = [r['loss'] for r in records if r['split'] == 'train']
  assert np.mean(train_losses[-2:]) < np.mean(train_losses[:2])
  assert {r['split'] for r in records} == {'train', 'valid', 'test'}
  saved = json.loads((tmp_path / 'results.json').read_text())
  assert metric in saved['valid'] and metric in saved['test']
  assert any(name.startswith('events') for name in os.listdir(tmp_path / 'tensorboard'))


def test_logged_training_metrics_are_interval_means(tmp_path):
  """A training record every 5 steps holds the mean of the 5 per-step records of the same run."""
  finals = {}
  for every in (1, 5):
    workdir = tmp_path / f'every{every}'
    trainer.train_and_evaluate(tiny_config('ptb_char', num_train_steps=10, log_every_steps=every),
                               str(workdir))
    finals[every] = {r['step']: r for r in read_metrics(workdir) if r['split'] == 'train'}
  assert sorted(finals[5]) == [5, 10]
  for step in (5, 10):
    window = [finals[1][s] for s in range(step - 4, step + 1)]
    for key in ('loss', 'bpc', 'grad_norm'):
      assert finals[5][step][key] == pytest.approx(np.mean([r[key] for r in window]), rel=1e-5)
    assert finals[5][step]['learning_rate'] == pytest.approx(window[-1]['learning_rate'])


def test_text_file_task(tmp_path):
  corpus = tmp_path / 'corpus.txt'
  corpus.write_text('the quick brown fox jumps over the lazy dog\n' * 400)
  config = tiny_config('text', **{'data.path': str(corpus)})
  results = trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['valid']['bpc'] < np.log2(28) - 0.5  # 28 symbols: uniform is 4.81 bits


def _one_step_setup(config):
  """(model, batch, schedule, tx, state) for one training step of a language model config."""
  dataset = data.load_dataset(config)
  model = objectives.for_dataset(dataset).build_model(config)
  batch = next(data.Batcher(dataset, 'train', config.batch_size, config.bptt_length, 0, False))
  batch = jax.tree.map(jnp.asarray, batch)
  params = model.init(jax.random.key(0), batch['inputs'])['params']
  schedule = optim.make_schedule(config.optimizer, 10, 30)
  tx = optim.make_optimizer(config.optimizer, schedule)
  carry = jax.eval_shape(lambda: model.apply({'params': params}, batch['inputs'])[1])
  carry = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), carry)
  state = trainer.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                             opt_state=tx.init(params), rng=jax.random.PRNGKey(0), carry=carry)
  return model, batch, schedule, tx, state


def test_one_step_changes_every_parameter():
  config = tiny_config('ptb_char', **{'model.between': 'layernorm', 'model.num_layers': 3,
                                      'model.peephole': True})
  model, batch, schedule, tx, state = _one_step_setup(config)
  params = state.params
  objective = objectives.for_dataset(data.load_dataset(config))
  step = jax.jit(trainer.make_train_step(model, objective, tx, schedule))
  new_state, metrics = step(state, batch, jnp.asarray(True))
  unchanged = [jax.tree_util.keystr(path) for path, a in jax.tree_util.tree_flatten_with_path(
      jax.tree.map(lambda a, b: bool(jnp.all(a == b)), params, new_state.params))[0] if a]
  assert not unchanged, f'parameters unchanged by one step: {unchanged}'
  assert np.isfinite(float(metrics['loss'])) and int(new_state.step) == 1


def test_bfloat16_compute_trains_float32_parameters(tmp_path, fast_calls):
  """model.dtype=bfloat16: the stack computes in bfloat16 (on the fast path), the parameters stay
  float32, and the language model learns."""
  config = tiny_config('ptb_char', **{'model.dtype': 'bfloat16'})
  model, batch, schedule, tx, state = _one_step_setup(config)
  _, carries = model.apply({'params': state.params}, batch['inputs'])
  assert fast_calls
  assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(carries))
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(state.params))
  results = trainer.train_and_evaluate(config, str(tmp_path))
  assert results['status'] == 'completed'
  train_losses = [r['loss'] for r in read_metrics(tmp_path) if r['split'] == 'train']
  assert np.all(np.isfinite(train_losses))
  assert np.mean(train_losses[-2:]) < np.mean(train_losses[:2])


def test_sequence_loss_reduction_scales_the_gradient_by_bptt_length():
  """Zaremba's loss (sum over the unrolled steps, mean over rows) has bptt_length times the
  per-token gradient: SGD at rate r/bptt_length on it takes the step SGD at rate r takes on the
  per-token mean.
  The logged loss is the per-token mean either way."""
  overrides = {'optimizer.name': 'sgd', 'optimizer.grad_clip_norm': 0.0}
  token_config = tiny_config('ptb_word', **overrides, **{'optimizer.learning_rate': 1.0})
  sequence_config = tiny_config('ptb_word', **overrides, **{
      'optimizer.learning_rate': 1.0 / token_config.bptt_length, 'loss_reduction': 'sequence'})
  results = {}
  for config in (token_config, sequence_config):
    model, batch, schedule, tx, state = _one_step_setup(config)
    objective = objectives.for_dataset(data.load_dataset(config))
    step = jax.jit(trainer.make_train_step(model, objective, tx, schedule,
                                           config.loss_reduction))
    results[config.loss_reduction] = step(state, batch, jnp.asarray(True))
  (token_state, token), (sequence_state, sequence) = results['token'], results['sequence']
  assert float(token['loss']) == pytest.approx(float(sequence['loss']), rel=1e-6)
  assert float(sequence['grad_norm']) == pytest.approx(
      token_config.bptt_length * float(token['grad_norm']), rel=1e-5)
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), token_state.params,
                       state.params)
  assert min(jax.tree.leaves(moved)) > 1e-4  # every parameter moved, by more than rounding
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               token_state.params, sequence_state.params)


@pytest.mark.parametrize('overrides, match', [
    ({'dataset': 'imagenet'}, "config.dataset='imagenet' is not a known dataset; choose one of "
     'ptb_char'),
    ({'optimizer.name': 'adamax'}, "config.optimizer.name='adamax' is not known; use one of sgd"),
    ({'model.activation': 'rleu'}, "config.model: activation='rleu' is not a known"),
    ({'model.between': 'softmax'}, "config.model: between='softmax' is not known"),
    ({'model.hidden_size': 0}, r'config.model.hidden_size=0 must be a positive integer'),
    ({'model.num_layers': -1}, r'config.model.num_layers=-1 must be a positive integer'),
    ({'num_train_steps': 0}, r'config.num_train_steps=0 must be a positive integer'),
    ({'batch_size': 0}, r'config.batch_size=0 must be a positive integer'),
    ({'dataset': 'digits', 'batch_size': 5000}, r'config.batch_size=5000 is larger than'),
    ({'batch_size': 6000}, r'config.batch_size=6000 is too large'),
    ({'optimizer.schedule': 'linear'}, "config.optimizer.schedule='linear' is not known"),
    ({'loss_reduction': 'batch'}, "config.loss_reduction='batch' is not known"),
])
def test_bad_config_fails_before_compiling(tmp_path, monkeypatch, overrides, match):
  def no_jit(*a, **k):
    raise AssertionError('compiled before the config was checked')
  monkeypatch.setattr(trainer.jax, 'jit', no_jit)
  with pytest.raises(ConfigError, match=match) as info:
    overrides = dict(overrides)
    trainer.train_and_evaluate(tiny_config(overrides.pop('dataset', 'ptb_char'), **overrides),
                               str(tmp_path))
  assert '\n' not in str(info.value)
  assert not os.path.exists(tmp_path / 'checkpoints')


def test_missing_text_path_is_one_line(tmp_path):
  with pytest.raises(ConfigError, match=r"config.data.path='/nonexistent/x.txt' does not exist"):
    trainer.train_and_evaluate(tiny_config('text', **{'data.path': '/nonexistent/x.txt'}),
                               str(tmp_path))


def _checkpoint_files(workdir):
  """{path: (size, mtime)} of every file under workdir/checkpoints."""
  out = {}
  for root, _, names in os.walk(os.path.join(workdir, 'checkpoints')):
    for name in names:
      stat = os.stat(os.path.join(root, name))
      out[os.path.relpath(os.path.join(root, name), workdir)] = (stat.st_size, stat.st_mtime_ns)
  return out


def test_divergence_found_at_a_logging_step_reports_the_first_non_finite_step(tmp_path):
  """SGD at rate 30 on a linear cell goes non-finite at step 4. Checked at every step
  (log_every_steps=1) or only at logging steps (5), the run stops at that step, with the same
  checkpoints (step 3), left as they were, and no record of a step after the last good one."""
  overrides = {'model.activation': 'linear', 'optimizer.name': 'sgd',
               'optimizer.learning_rate': 30.0, 'optimizer.grad_clip_norm': 0.0,
               'eval_every_steps': 1000, 'checkpoint_every_steps': 3}
  outcome = {}
  for every in (1, 5):
    workdir = str(tmp_path / f'every{every}')
    files_at_step_3 = {}

    def save(*args, original=trainer.workdir_lib.Checkpoints.save, **kwargs):
      original(*args, **kwargs)
      files_at_step_3.update(_checkpoint_files(workdir))

    with pytest.MonkeyPatch.context() as patch:
      patch.setattr(trainer.workdir_lib.Checkpoints, 'save', save)
      # The loss grows past DIVERGENCE_FACTOR times its start at step 3 (tests/test_faults.py
      # tests that rule); here the non-finite rule alone is tested.
      patch.setattr(trainer, 'DIVERGENCE_FACTOR', math.inf)
      with pytest.raises(trainer.NonFiniteLoss, match='at step 4: stopped. The last good '
                                                      r'checkpoint \(step 3\)'):
        trainer.train_and_evaluate(tiny_config('ptb_char', log_every_steps=every,
                                               **overrides), workdir)
    results = json.loads(open(os.path.join(workdir, 'results.json')).read())
    assert results['status'] == 'diverged' and results['step'] == 4
    assert _checkpoint_files(workdir) == files_at_step_3  # untouched since step 3 was saved
    outcome[every] = sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
    logged = os.path.exists(os.path.join(workdir, 'metrics.jsonl'))
    steps = [r['step'] for r in read_metrics(workdir)] if logged else []
    assert steps == ([1, 2, 3] if every == 1 else [])
  assert outcome[1] == outcome[5] == ['3']


def test_metrics_are_fetched_at_logging_steps_only(tmp_path, monkeypatch):
  fetched = []
  original = trainer._fetch_finite

  def spy(pending, step, *args):
    fetched.append((step, len(pending)))
    return original(pending, step, *args)
  monkeypatch.setattr(trainer, '_fetch_finite', spy)
  trainer.train_and_evaluate(tiny_config('ptb_char', num_train_steps=12, log_every_steps=5,
                                         eval_every_steps=6, checkpoint_every_steps=1000),
                             str(tmp_path))
  assert fetched == [(5, 5), (6, 1), (10, 4), (12, 2)]  # logging and evaluation steps
  train_records = [r['step'] for r in read_metrics(tmp_path) if r['split'] == 'train']
  assert train_records == [5, 10, 12]


def test_the_best_checkpoint_survives_resumption(tmp_path):
  """A run stopped and resumed keeps the best validation of its first part: its best
  checkpoint and results equal an uninterrupted run's, and it resumed from the latest."""
  config = dict(num_train_steps=20, eval_every_steps=4, checkpoint_every_steps=5,
                **{'optimizer.learning_rate': 0.05})
  whole = trainer.train_and_evaluate(tiny_config('ptb_char', **config), str(tmp_path / 'whole'))
  parts = str(tmp_path / 'parts')
  first = trainer.train_and_evaluate(tiny_config('ptb_char', stop_after_steps=10, **config), parts)
  assert first['status'] == 'preempted' and first['step'] == 10
  resumed = trainer.train_and_evaluate(tiny_config('ptb_char', **config), parts)
  assert resumed['steps_this_run'] == 10
  assert resumed['best_valid'] == whole['best_valid']
  best = lambda workdir: sorted(os.listdir(os.path.join(workdir, 'best')))
  assert best(parts) == best(str(tmp_path / 'whole'))
  valid = [r for r in read_metrics(tmp_path / 'whole') if r['split'] == 'valid']
  assert whole['best_valid'] == {k: v for k, v in min(valid, key=lambda r: r['loss']).items()
                                 if k not in ('step', 'split')}


def test_language_model_never_carries_state_across_documents(tmp_path):
  """With config.data.document_separator, what the model predicts after a document begins does
  not depend on the text before it, nor on the state carried in from the previous batch."""
  corpus = tmp_path / 'docs.txt'
  corpus.write_text('\n\n'.join(['the cat sat on the mat', 'a dog ran far away',
                                 'birds sing at dawn'] * 60) + '\n')
  config = tiny_config('text', **{'data.path': str(corpus), 'data.document_separator': '\n\n'})
  dataset = data.load_dataset(config)
  objective = objectives.for_dataset(dataset)
  model = objective.build_model(config)
  batch = jax.tree.map(jnp.asarray, next(data.Batcher(dataset, 'train', 8, 30, 0, False)))
  row, start = next((r, int(c)) for r in range(8)
                    for c in np.flatnonzero(np.asarray(batch['segment_starts'][r])) if c > 0)
  params = model.init(jax.random.key(0), **objective.model_inputs(batch))['params']
  carry_shape = jax.eval_shape(lambda: objective.apply(model, params, batch, None, None, False)[1])
  noisy = jax.tree.map(lambda s: jax.random.normal(jax.random.key(1), s.shape, s.dtype),
                       carry_shape)
  logits, _ = objective.apply(model, params, batch, noisy, None, False)
  changed = dict(batch, inputs=batch['inputs'].at[row, :start].set(
      (batch['inputs'][row, :start] + 1) % dataset.vocab_size))
  other, _ = objective.apply(model, params, changed, None, None, False)
  np.testing.assert_allclose(other[row, start:], logits[row, start:], rtol=1e-5, atol=1e-6)
  assert not np.allclose(other[row, :start], logits[row, :start])  # before it, it does
  results = trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['status'] == 'completed'
