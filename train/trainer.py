"""`train_and_evaluate(config, workdir)`: the training loop.

Pure jit-compiled train and eval steps over a data-parallel mesh (batch sharded on its leading
axis, parameters replicated), orbax checkpoints that resume step, parameters, optimizer state, data
position, RNG and the language model's carried state; evaluation on the validation split every
`eval_every_steps` and on test at the end; metrics to TensorBoard and `metrics.jsonl`; the final
summary in `results.json`. SIGTERM saves a checkpoint and returns; a non-finite loss stops the run.
"""
from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from typing import Any, Callable, Iterable, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from train import checkpoint, data, metrics as metrics_lib, models, optim, validation

ConfigError = validation.ConfigError


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  carry: Any  # the language model's per-layer carries, passed from batch to batch; else ()


class NonFiniteLoss(FloatingPointError):
  pass


# ----------------------------------------------------------------------------------------------
# Losses: per kind, sums over the batch so that evaluation can add batches exactly.

def _xent(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def loss_sums(kind: str, outputs, batch) -> dict[str, jax.Array]:
  """{'loss': sum, 'count': weight, 'correct': sum (classification)} for one batch."""
  if kind == 'lm':
    if isinstance(outputs, tuple):  # biLM: forward and backward models, each on its own stream
      forward = loss_sums(kind, outputs[0], batch)
      backward = loss_sums(kind, outputs[1], {'targets': batch['targets_rev']})
      total = jax.tree.map(jnp.add, forward, backward)
      return {**total, 'loss_forward': forward['loss'], 'loss_backward': backward['loss']}
    xent = _xent(outputs, batch['targets'])
    correct = (outputs.argmax(-1) == batch['targets'])
    return {'loss': xent.sum(), 'count': jnp.asarray(xent.size, jnp.float32),
            'correct': correct.sum().astype(jnp.float32)}
  valid = batch['valid']
  if kind == 'classify':
    xent = _xent(outputs, batch['labels'])
    correct = (outputs.argmax(-1) == batch['labels'])
    return {'loss': (xent * valid).sum(), 'count': valid.sum(), 'correct': (correct * valid).sum()}
  if kind == 'per_step':
    weights = batch['weights'] * valid[:, None]
    xent = _xent(outputs, batch['targets'])
    correct = (outputs.argmax(-1) == batch['targets'])
    return {'loss': (xent * weights).sum(), 'count': weights.sum(),
            'correct': (correct * weights).sum()}
  if kind == 'regress':
    err = jnp.square(outputs[:, 0] - batch['targets'])
    return {'loss': (err * valid).sum(), 'count': valid.sum()}
  if kind == 'ctc':  # loss per utterance; the blank is the last class
    frames = jnp.arange(outputs.shape[1])[None, :]
    logit_paddings = (frames >= batch['lengths'][:, None]).astype(jnp.float32)
    labels = jnp.where(batch['weights'] > 0, batch['targets'], 0)
    per_utterance = optax.ctc_loss(outputs, logit_paddings, labels, 1.0 - batch['weights'],
                                   blank_id=outputs.shape[-1] - 1)
    return {'loss': (per_utterance * valid).sum(), 'count': valid.sum()}
  raise ValueError(f'unknown kind {kind!r}')


def summarize(kind: str, level: Optional[str], sums: dict[str, float]) -> dict[str, float]:
  count = max(float(sums['count']), 1e-12)
  out = {'loss': float(sums['loss']) / count}
  if 'correct' in sums:
    out['accuracy'] = float(sums['correct']) / count
  out.update(metrics_lib.derived(kind, level, out['loss']))
  if 'label_errors' in sums:
    out['label_error_rate'] = float(sums['label_errors']) / max(float(sums['labels']), 1.0)
  for direction in ('forward', 'backward'):
    if f'loss_{direction}' in sums:
      loss = float(sums[f'loss_{direction}']) / (count / 2)
      out.update({f'{k}_{direction}': v for k, v in
                  {'loss': loss, **metrics_lib.derived(kind, level, loss)}.items()})
  return out


def apply_model(model, kind: str, params, batch, carry, rng, train: bool):
  """Runs the model on a batch; returns (outputs, new carry)."""
  rngs = {'dropout': rng} if train else {}
  if kind == 'lm':
    tokens = (batch['inputs'], batch['inputs_rev']) if 'inputs_rev' in batch else (batch['inputs'],)
    return model.apply({'params': params}, *tokens, initial_carry=carry, deterministic=not train,
                       rngs=rngs)
  if kind in ('classify', 'regress', 'ctc'):
    lengths = batch.get('lengths')
    if lengths is None:
      lengths = jnp.full(batch['inputs'].shape[:1], batch['inputs'].shape[1], jnp.int32)
    return model.apply({'params': params}, batch['inputs'], lengths, deterministic=not train,
                       rngs=rngs), ()
  return model.apply({'params': params}, batch['inputs'], deterministic=not train, rngs=rngs), ()


def make_train_step(model, kind: str, tx, schedule, loss_reduction: str = 'token') -> Callable:
  """The jitted-to-be training step. The loss it differentiates is the mean over tokens
  (`loss_reduction='token'`) or the sum over time steps of the mean over sequences ('sequence',
  Zaremba's and TensorFlow's PTB code: num_steps times larger, which their learning rates and
  clipping thresholds assume). The logged loss is the per-token mean either way."""
  if loss_reduction not in optim.LOSS_REDUCTIONS:
    raise ValueError(f'loss_reduction={loss_reduction!r}; use one of '
                     + ', '.join(optim.LOSS_REDUCTIONS))

  def train_step(state: TrainState, batch, reset):
    rng = jax.random.fold_in(state.rng, state.step)
    carry = jax.tree.map(lambda c: jnp.where(reset, jnp.zeros_like(c), c), state.carry)

    def loss_fn(params):
      outputs, new_carry = apply_model(model, kind, params, batch, carry or None, rng, True)
      sums = loss_sums(kind, outputs, batch)
      if loss_reduction == 'sequence':
        objective = sums['loss'] / batch['inputs'].shape[0]  # rows of the global batch
      else:
        objective = sums['loss'] / jnp.maximum(sums['count'], 1e-12)
      return objective, (sums, new_carry)

    (_, (sums, new_carry)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    loss = sums['loss'] / jnp.maximum(sums['count'], 1e-12)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    out = {'loss': loss, 'grad_norm': optax.tree.norm(grads),
           'learning_rate': jnp.asarray(schedule(state.step), jnp.float32)}
    if 'correct' in sums:
      out['accuracy'] = sums['correct'] / jnp.maximum(sums['count'], 1e-12)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              carry=jax.lax.stop_gradient(new_carry) if kind == 'lm' else ())
    return new_state, out
  return train_step


def make_eval_step(model, kind: str) -> Callable:
  def eval_step(params, batch, carry):
    outputs, new_carry = apply_model(model, kind, params, batch, carry or None, None, False)
    sums = loss_sums(kind, outputs, batch)
    if kind == 'ctc':  # the frame-wise best class, decoded on the host
      sums['best_path'] = outputs.argmax(-1)
    return sums, (new_carry if kind == 'lm' else ())
  return eval_step


# ----------------------------------------------------------------------------------------------
# Distribution: one mesh axis over every device of every process.

class Distribution:
  def __init__(self):
    self.mesh = Mesh(np.asarray(jax.devices()), ('data',))
    self.batch = NamedSharding(self.mesh, P('data'))
    self.replicated = NamedSharding(self.mesh, P())
    self.num_devices = jax.device_count()

  def check_batch(self, global_batch: int, what: str) -> None:
    if global_batch % self.num_devices:
      raise ConfigError(f'{what}={global_batch} must divide by the number of devices '
                        f'({self.num_devices}); use a multiple of {self.num_devices}')

  def put_batch(self, batch: dict) -> dict:
    """Global numpy batch -> global jax arrays; each process contributes its own rows."""
    n, i = jax.process_count(), jax.process_index()

    def put(x):
      rows = x.shape[0] // n
      return jax.make_array_from_process_local_data(self.batch, x[i * rows:(i + 1) * rows],
                                                    x.shape)
    return jax.tree.map(put, batch)

  def carry_sharding(self, carry):
    return jax.tree.map(lambda _: self.batch, carry)


# ----------------------------------------------------------------------------------------------
# Preemption: SIGTERM sets a flag that the loop reads between steps.

class Preemption:
  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    logging.warning('SIGTERM received: saving a checkpoint and stopping')
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def agreed(self) -> bool:
    """True when any process was asked to stop (all processes must save together)."""
    if jax.process_count() == 1:
      return self.requested
    return bool(np.any(multihost_utils.process_allgather(np.asarray(self.requested))))


# ----------------------------------------------------------------------------------------------

def _write_json(path: str, value: dict) -> None:
  if jax.process_index() != 0:
    return
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(value, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _load(config):
  try:
    dataset = data.load_dataset(config)
    kind = dataset.kind
    num_steps = config.get('num_steps') if kind == 'lm' else None
    bilm = kind == 'lm' and config.model.get('bilm', False)
    train = data.Batcher(dataset, 'train', config.batch_size, num_steps, config.seed,
                         shuffle=kind != 'lm', with_reverse=bilm)
    eval_bs = config.get('eval_batch_size') or config.batch_size
    evals = {split: data.Batcher(dataset, split, eval_bs, num_steps, config.seed, shuffle=False,
                                 drop_remainder=False, with_reverse=bilm)
             for split in ('valid', 'test')}
  except ValueError as e:
    raise ConfigError(str(e)) from None
  return dataset, train, evals


def total_steps(config, steps_per_epoch: int) -> int:
  if config.get('num_epochs', 0) and config.num_epochs > 0:
    return int(math.ceil(config.num_epochs * steps_per_epoch))
  return config.num_train_steps


def evaluate(eval_step, params, batcher: data.Batcher, dist: Distribution, kind: str,
             zero_carry: Callable) -> dict[str, float]:
  blank = batcher.dataset.num_classes  # CTC: the class after the labels
  totals: dict[str, float] = {}
  carry = ()
  for host_batch in batcher.epoch_batches():
    batch = dist.put_batch(host_batch)
    if kind == 'lm' and not carry:
      carry = zero_carry(batch['inputs'].shape[0])
    sums, carry = eval_step(params, batch, carry)
    if 'best_path' in sums:
      best_path = np.asarray(multihost_utils.process_allgather(sums.pop('best_path'), tiled=True))
      for k, v in metrics_lib.ctc_errors(best_path, host_batch, blank).items():
        totals[k] = totals.get(k, 0.0) + v
    for k, v in sums.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  return totals


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming from its latest checkpoint); returns the results."""
  metrics_lib.quiet_library_logs()
  validation.check_config(config)
  dataset, train_batches, eval_batches = _load(config)
  kind = dataset.kind
  level = {'ptb_char': 'char', 'ptb_word': 'word'}.get(config.task) or config.data.get('level') \
      or 'char'
  dist = Distribution()
  dist.check_batch(config.batch_size, 'config.batch_size')
  if config.get('eval_batch_size'):
    dist.check_batch(config.eval_batch_size, 'config.eval_batch_size')
  model = models.build_model(config, dataset)
  steps_per_epoch = train_batches.batches_per_epoch()
  num_train_steps = total_steps(config, steps_per_epoch)
  schedule = optim.make_schedule(config.optimizer, steps_per_epoch, num_train_steps)
  tx = optim.make_optimizer(config.optimizer, schedule)
  logging.info('data: %s', dataset.describe())
  logging.info('%d steps (%d per epoch) on %d device(s) in %d process(es)', num_train_steps,
               steps_per_epoch, dist.num_devices, jax.process_count())

  os.makedirs(workdir, exist_ok=True)
  try:
    checkpoint.check_config(workdir, config.to_json_best_effort())
  except checkpoint.ConfigConflict as e:
    raise ConfigError(str(e)) from None

  sample = next(iter(train_batches.epoch_batches()))
  sample = jax.tree.map(lambda x: jnp.asarray(x[:1]), sample)

  def zero_carry(batch_size):
    carry_shapes = jax.eval_shape(
        lambda p: apply_model(model, kind, p, sample, None, None, False)[1], params_shape)
    zeros = lambda: jax.tree.map(lambda s: jnp.zeros((batch_size,) + s.shape[1:], s.dtype),
                                 carry_shapes)
    return jax.jit(zeros, out_shardings=dist.carry_sharding(carry_shapes))()

  def init_state():
    rng = jax.random.PRNGKey(config.seed)
    params = model.init({'params': jax.random.fold_in(rng, 1)},
                        **_init_inputs(kind, sample))['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.fold_in(rng, 2), carry=())

  state_shape = jax.eval_shape(init_state)
  params_shape = state_shape.params
  state = jax.jit(init_state, out_shardings=jax.tree.map(lambda _: dist.replicated, state_shape))()
  if kind == 'lm':
    state = state.replace(carry=zero_carry(config.batch_size))

  ckpts = checkpoint.Checkpoints(workdir, config.keep_checkpoints)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                          state)
  restored = ckpts.restore(abstract)
  if restored is not None:
    state, meta = restored
    train_batches.restore(meta['data'])
    logging.info('resumed from step %d in %s', int(state.step), workdir)
  start_step = int(state.step)
  writer = metrics_lib.MetricWriter(workdir, start_step)
  progress_tokens = int(np.prod(sample['inputs'].shape[:2])) * config.batch_size
  progress = metrics_lib.Progress(start_step, num_train_steps, progress_tokens)

  train_step = jax.jit(make_train_step(model, kind, tx, schedule,
                                       config.optimizer.get('loss_reduction', 'token')),
                       donate_argnums=0)
  eval_step = jax.jit(make_eval_step(model, kind))

  def save(step):
    ckpts.save(step, state, {'data': train_batches.state(), 'step': step})

  results = {'task': config.task, 'status': 'running'}
  best_valid = None
  step = start_step
  t_start = time.perf_counter()
  interval = []  # this logging interval's training metrics, logged as their mean
  with Preemption() as preemption:
    while step < num_train_steps:
      position = train_batches.state()['position']
      reset = position == 0 or position >= steps_per_epoch
      batch = dist.put_batch(next(train_batches))
      state, train_metrics = train_step(state, batch, jnp.asarray(reset))
      loss, grad_norm = float(train_metrics['loss']), float(train_metrics['grad_norm'])
      step += 1
      if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        results.update(status='diverged', step=step,
                       message=f'non-finite loss {loss} (gradient norm {grad_norm}) at step {step}')
        _write_json(os.path.join(workdir, 'results.json'), results)
        writer.close()
        ckpts.close()
        raise NonFiniteLoss(f'loss {loss}, gradient norm {grad_norm} at step {step}: stopped. '
                            f'The last good checkpoint '
                            f'(step {ckpts.latest_step()}) in {workdir} is untouched.')
      interval.append(train_metrics)
      if step % config.log_every_steps == 0 or step == num_train_steps:
        scalars = {k: float(np.mean([float(m[k]) for m in interval])) for k in train_metrics}
        scalars['learning_rate'] = float(train_metrics['learning_rate'])
        interval = []
        scalars.update(metrics_lib.derived(kind, level, scalars['loss']))
        rate = progress.rate(step)
        writer.write(step, 'train', {**scalars, **rate})
        progress.line(step, {k: scalars[k] for k in ('loss', 'bpc', 'perplexity', 'accuracy')
                             if k in scalars}, rate)
      if step % config.eval_every_steps == 0 and step < num_train_steps:
        valid = summarize(kind, level, evaluate(eval_step, state.params, eval_batches['valid'],
                                                dist, kind, zero_carry))
        writer.write(step, 'valid', valid)
        logging.info('step %d valid: %s', step, _fmt(valid))
        best_valid = valid if best_valid is None or valid['loss'] < best_valid['loss'] else best_valid
      if step % config.checkpoint_every_steps == 0 and step < num_train_steps:
        save(step)
      stop_after = config.get('stop_after_steps', 0)
      if preemption.agreed() or (stop_after and step - start_step >= stop_after):
        save(step)
        results.update(status='preempted', step=step)
        _write_json(os.path.join(workdir, 'results.json'), results)
        writer.close()
        ckpts.close()
        logging.info('stopped at step %d with a checkpoint; rerun the same command to resume', step)
        return results
  train_time = time.perf_counter() - t_start
  save(step)
  final = {split: summarize(kind, level, evaluate(eval_step, state.params, b, dist, kind,
                                                  zero_carry))
           for split, b in eval_batches.items()}
  for split, values in final.items():
    writer.write(step, split, values)
    logging.info('final %s: %s', split, _fmt(values))
  if best_valid is None or final['valid']['loss'] < best_valid['loss']:
    best_valid = final['valid']
  results.update(status='completed', step=step, valid=final['valid'], test=final['test'],
                 best_valid=best_valid, train_time_s=round(train_time, 1),
                 steps_this_run=step - start_step, devices=dist.num_devices,
                 processes=jax.process_count(), platform=jax.devices()[0].platform,
                 num_params=int(sum(x.size for x in jax.tree.leaves(state.params))))
  _write_json(os.path.join(workdir, 'results.json'), results)
  writer.close()
  ckpts.close()
  return results


def _init_inputs(kind: str, sample: dict) -> dict:
  if kind in ('classify', 'regress'):
    return {'inputs': sample['inputs'], 'lengths': sample['lengths'] if 'lengths' in sample
            else jnp.full(sample['inputs'].shape[:1], sample['inputs'].shape[1], jnp.int32)}
  if kind == 'lm':
    return {'tokens': sample['inputs'], **({'tokens_rev': sample['inputs_rev']}
                                           if 'inputs_rev' in sample else {})}
  return {'inputs': sample['inputs']}


def _fmt(values: dict) -> str:
  return ', '.join(f'{k} {v:.4f}' for k, v in values.items())
