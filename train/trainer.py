"""`train_and_evaluate(config, workdir)`: the step functions and the training loop.

Pure jit-compiled train and eval steps over a data-parallel mesh (`distributed.Distribution`),
orbax checkpoints that resume step, parameters, optimizer state, data position, RNG and the
language model's carried state; evaluation on the validation split every `eval_every_steps` (the
best parameters by validation loss kept apart) and on test at the end; metrics to TensorBoard and
`metrics.jsonl`; the final summary in `results.json`. Before the first step the workdir gets what
rebuilds the model without the data (`config.json`, `dataset.json`, `vocab.json`, with their
checksums). The run holds the workdir's lock (train/lock.py) from before its first write to its
end; a second process on the workdir is refused. SIGTERM, SIGINT (Ctrl-C) and SIGHUP save a
checkpoint and return (`distributed.Preemption`; a second Ctrl-C exits at once); a loss that is
not finite, or that grows past DIVERGENCE_FACTOR times its first value, stops the run as
`diverged`. A completed run is not run again. What differs between kinds of dataset (model inputs,
losses, metrics) is asked of their `objectives.Objective`.

The loop does not wait for the device at every step: the steps' metrics stay on the device until
a logging, evaluation, checkpoint or stopping step, where they are fetched together and checked.
A non-finite loss or gradient norm then stops the run at the first step that had one, before
anything computed after it is evaluated, logged or saved: the run reports exactly the step and
leaves exactly the checkpoints that checking every step would. Steps/s leave out the time spent
evaluating and checkpointing.

A stopping signal during an evaluation stops the run right after it (with a checkpoint); during
the final checkpoint and evaluation, they finish; while the run starts (compiling, restoring), it
stops before the first step. A run resumes from the newest checkpoint that restores
(see `workdir.Checkpoints`); a fault of its environment (a write that fails, device memory
that runs out) ends it with `faults.RunFault`, whose message is one line, and `results.json`
says `failed` where it can be written.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from lstm import memory
from train import data, distributed, faults, files, metrics as metrics_lib, optim
from train import lock, objectives, validation, workdir as workdir_lib

ConfigError = validation.ConfigError


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  carry: Any  # the language model's per-layer carries, passed from batch to batch; else ()


# A run whose training loss at a step exceeds this many times its loss at step 1 has diverged,
# even while the loss is finite. A language model starts at about log(vocabulary size) and a
# classifier at log(classes); training noise stays far below a hundredfold rise.
DIVERGENCE_FACTOR = 100


class Diverged(faults.RunFault):
  """The loss grew past DIVERGENCE_FACTOR times its first value, or stopped being finite."""


class NonFiniteLoss(Diverged, FloatingPointError):
  """A loss or gradient norm that is not finite stopped the run."""


# ----------------------------------------------------------------------------------------------
# Step functions


def make_train_step(model, objective: objectives.Objective, tx, schedule,
                    loss_reduction: str = 'token') -> Callable:
  """The jitted-to-be training step. The loss it differentiates is the mean over tokens
  (`loss_reduction='token'`) or the sum over time steps of the mean over sequences ('sequence',
  Zaremba's and TensorFlow's PTB code: bptt_length times larger, which their learning rates and
  clipping thresholds assume). The logged loss is the per-token mean either way."""
  if loss_reduction not in objectives.LOSS_REDUCTIONS:
    raise ValueError(f'loss_reduction={loss_reduction!r}; use one of '
                     + ', '.join(objectives.LOSS_REDUCTIONS))

  def train_step(state: TrainState, batch, reset):
    rng = jax.random.fold_in(state.rng, state.step)
    carry = jax.tree.map(lambda c: jnp.where(reset, jnp.zeros_like(c), c), state.carry)

    def loss_fn(params):
      outputs, new_carry = objective.apply(model, params, batch, carry or None, rng, True)
      sums = objective.loss_sums(outputs, batch)
      if loss_reduction == 'sequence':
        loss = sums['loss'] / batch['inputs'].shape[0]  # rows of the global batch
      else:
        loss = sums['loss'] / jnp.maximum(sums['count'], 1e-12)
      return loss, (sums, new_carry)

    (_, (sums, new_carry)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    loss = sums['loss'] / jnp.maximum(sums['count'], 1e-12)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    out = {'loss': loss, 'grad_norm': optax.tree.norm(grads),
           'learning_rate': jnp.asarray(schedule(state.step), jnp.float32)}
    if 'correct' in sums:
      out['accuracy'] = sums['correct'] / jnp.maximum(sums['count'], 1e-12)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              carry=jax.lax.stop_gradient(new_carry) if objective.stream else ())
    return new_state, out
  return train_step


def make_eval_step(model, objective: objectives.Objective) -> Callable:
  """(params, batch, carry) -> (loss sums, arrays for the host, next carry)."""
  def eval_step(params, batch, carry):
    outputs, new_carry = objective.apply(model, params, batch, carry or None, None, False)
    return (objective.loss_sums(outputs, batch), objective.eval_outputs(outputs),
            new_carry if objective.stream else ())
  return eval_step


def evaluate(eval_step, params, batcher: data.Batcher, dist: distributed.Distribution,
             objective: objectives.Objective, zero_carry: Callable) -> dict[str, float]:
  """Sums over one pass of `batcher` (device sums and the objective's host sums)."""
  totals: dict[str, float] = {}

  def add(sums):
    for k, v in sums.items():
      totals[k] = totals.get(k, 0.0) + float(v)

  carry = ()
  for host_batch in batcher.epoch_batches():
    batch = dist.put_batch(host_batch)
    if objective.stream and not carry:
      carry = zero_carry(batch['inputs'].shape[0])
    sums, fetched, carry = eval_step(params, batch, carry)
    if fetched:
      add(objective.host_sums({k: dist.gather(v) for k, v in fetched.items()}, host_batch))
    add(sums)
  return totals


# ----------------------------------------------------------------------------------------------
# Set-up: everything a run needs before its first step, checked before anything compiles


@dataclasses.dataclass
class Setup:
  config: Any
  dataset: data.Dataset
  objective: objectives.Objective
  model: Any
  train_batches: data.Batcher
  eval_batches: dict[str, data.Batcher]
  dist: distributed.Distribution
  schedule: Any
  tx: Any
  steps_per_epoch: int
  num_train_steps: int


def total_steps(config, steps_per_epoch: int) -> int:
  if config.num_epochs > 0:
    return int(math.ceil(config.num_epochs * steps_per_epoch))
  return config.num_train_steps


def eval_batcher(config, dataset: data.Dataset, objective: objectives.Objective,
                 split: str) -> data.Batcher:
  """One pass over `split` as the run evaluates it (the same rows, steps and order)."""
  bptt_length = config.bptt_length if objective.stream else None
  return data.Batcher(dataset, split, config.eval_batch_size or config.batch_size, bptt_length,
                      config.seed, shuffle=False, drop_remainder=False,
                      with_reverse=objective.stream and config.model.bilm)


def setup(config) -> Setup:
  """Checks `config`, loads the data and builds the model and optimizer (nothing compiled)."""
  validation.check_config(config)
  try:
    dataset = data.load_dataset(config)
    objective = objectives.for_dataset(dataset)
    bptt_length = config.bptt_length if objective.stream else None
    with_reverse = objective.stream and config.model.bilm
    train = data.Batcher(dataset, 'train', config.batch_size, bptt_length, config.seed,
                         shuffle=not objective.stream, with_reverse=with_reverse)
    evals = {split: eval_batcher(config, dataset, objective, split) for split in ('valid', 'test')}
  except ValueError as e:
    raise ConfigError(str(e)) from None
  dist = distributed.Distribution()
  dist.check_batch(config.batch_size, 'config.batch_size')
  if config.eval_batch_size:
    dist.check_batch(config.eval_batch_size, 'config.eval_batch_size')
  steps_per_epoch = train.batches_per_epoch()
  num_train_steps = total_steps(config, steps_per_epoch)
  schedule = optim.make_schedule(config.optimizer, steps_per_epoch, num_train_steps)
  return Setup(config, dataset, objective, objective.build_model(config), train, evals, dist,
               schedule, optim.make_optimizer(config.optimizer, schedule), steps_per_epoch,
               num_train_steps)


def first_rows(batcher: data.Batcher) -> dict:
  """The first row of the first batch, as device arrays: what parameters are shaped on."""
  return jax.tree.map(lambda x: jnp.asarray(x[:1]), next(iter(batcher.epoch_batches())))


def make_zero_carry(model, objective: objectives.Objective, dist: distributed.Distribution,
                    params, sample) -> Callable:
  """`zero_carry(batch_size)`: the language model's zero carried state for a batch of that many
  rows, sharded like a batch. `params` may be shapes only."""
  carry_shapes = jax.eval_shape(
      lambda p: objective.apply(model, p, sample, None, None, False)[1], params)

  def zero_carry(batch_size):
    zeros = lambda: jax.tree.map(lambda a: jnp.zeros((batch_size,) + a.shape[1:], a.dtype),
                                 carry_shapes)
    return jax.jit(zeros, out_shardings=dist.carry_sharding(carry_shapes))()
  return zero_carry


def initial_state(s: Setup) -> tuple[TrainState, Callable]:
  """The state at step 0, placed on the mesh, and `zero_carry(batch_size)` for the carried
  state of language models."""
  sample = first_rows(s.train_batches)

  def init_state():
    rng = jax.random.PRNGKey(s.config.seed)
    params = s.model.init({'params': jax.random.fold_in(rng, 1)},
                          **s.objective.model_inputs(sample))['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=s.tx.init(params),
                      rng=jax.random.fold_in(rng, 2), carry=())

  state_shape = jax.eval_shape(init_state)
  zero_carry = make_zero_carry(s.model, s.objective, s.dist, state_shape.params, sample)
  state = jax.jit(init_state,
                  out_shardings=jax.tree.map(lambda _: s.dist.replicated, state_shape))()
  if s.objective.stream:
    state = state.replace(carry=zero_carry(s.config.batch_size))
  return state, zero_carry


# ----------------------------------------------------------------------------------------------
# The loop


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming from its latest checkpoint); returns the results.
  A fault of the environment (a failed write, a damaged checkpoint with none to fall back on,
  device memory, another process writing to `workdir`) raises `faults.RunFault` with one line
  to show. A run that has completed is left as it is: its results are returned, nothing is
  written."""
  metrics_lib.quiet_library_logs()
  if config.keep_freed_memory:
    memory.keep_freed_memory()
  s = setup(config)
  logging.info('data: %s', s.dataset.describe())
  logging.info('%d steps (%d per epoch) on %d device(s) in %d process(es)', s.num_train_steps,
               s.steps_per_epoch, s.dist.num_devices, jax.process_count())
  with faults.writing(workdir):
    os.makedirs(workdir, exist_ok=True)
  with _holding(workdir), distributed.Preemption() as preemption:
    config_json = config.to_json_best_effort()
    workdir_lib.compare_config(workdir, config_json)  # every saved file checked before any write
    workdir_lib.check_dataset(workdir, s.dataset, config.data.allow_changed_data)
    workdir_lib.record_config(workdir, config_json)  # files that would not change are not written
    workdir_lib.record_dataset(workdir, s.dataset, config.data.allow_changed_data)
    with _out_of_memory_reported(s):
      state, zero_carry = initial_state(s)
    ckpts = workdir_lib.Checkpoints(workdir, config.keep_checkpoints)
    restored = ckpts.restore(_abstract(state))
    first_loss = None
    if restored is not None:
      state, meta = restored
      finished = _finished(workdir, int(state.step), s.num_train_steps)
      if finished is not None:
        logging.info('the run in %s is finished (completed at step %d): nothing to do, nothing '
                     'written; its results are in results.json', workdir, finished['step'])
        ckpts.close()
        return finished
      s.train_batches.restore(meta['data'])
      first_loss = meta.get('first_loss')
      logging.info('resumed from step %d in %s', int(state.step), workdir)
    writer = metrics_lib.MetricWriter(workdir, int(state.step))
    results = {'dataset': config.dataset, 'status': 'running'}
    try:
      with _out_of_memory_reported(s):
        return _run(s, state, zero_carry, ckpts, writer, results, workdir, preemption, first_loss)
    except faults.RunFault as e:
      if results['status'] == 'running':
        results.update(status='failed', message=str(e))
      raise
    finally:
      _record_results(workdir, results)
      writer.close()
      ckpts.close()


@contextlib.contextmanager
def _holding(workdir: str):
  """The workdir's lock (train/lock.py) for the block: process 0 takes it, and every process
  stops with its one line when it cannot."""
  error = None
  if jax.process_index() == 0:
    try:
      lock.take(workdir, 'training')
    except faults.RunFault as e:
      error = e
  if jax.process_count() > 1:
    taken = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if not taken and error is None:
      error = faults.RunFault(f'process 0 could not lock {workdir}; see its error')
  if error is not None:
    raise error
  try:
    yield
  finally:
    if jax.process_index() == 0:
      lock.release(workdir)


def _finished(workdir: str, restored_step: int, num_train_steps: int):
  """The results of the workdir's run when it completed at `num_train_steps` and its newest
  checkpoint that restores (`restored_step`) is that step's, else None."""
  results = files.read_results(workdir)
  if (isinstance(results, dict) and results.get('status') == 'completed'
      and results.get('step') == num_train_steps == restored_step):
    return results
  return None


def _abstract(tree):
  """Shapes, dtypes and shardings of the arrays in `tree` (what a checkpoint is restored as)."""
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                      tree)


def _record_results(workdir: str, results: dict) -> None:
  """`results.json` once the run has a status. For a run that failed, a write that fails too is
  let go: the first fault is the one reported."""
  if results['status'] == 'running' or jax.process_index() != 0:
    return
  try:
    files.write_json(os.path.join(workdir, 'results.json'), results, sort_keys=True)
  except faults.RunFault:
    if results['status'] not in ('failed', 'diverged'):
      raise


def _out_of_memory_reported(s: Setup):
  """Turns XLA's RESOURCE_EXHAUSTED into RunFault naming the batch, the sequence length and the
  parameter count, with what would use less memory."""
  def sizes():
    rows, steps = s.train_batches.batch_shape()
    sample = first_rows(s.train_batches)
    shapes = jax.eval_shape(lambda: s.model.init(jax.random.PRNGKey(0),
                                                 **s.objective.model_inputs(sample)))
    num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
    return (f'batches of {rows} x {steps} (config.batch_size x time steps) and {num_params:,} '
            'parameters')
  return faults.out_of_memory_reported(
      sizes, 'use a smaller config.batch_size or config.bptt_length, config.model.remat=True, or '
      'config.model.scan_layers=True for a deep stack')


def _run(s: Setup, state: TrainState, zero_carry, ckpts, writer, results: dict,
         workdir: str, preemption: distributed.Preemption, first_loss) -> dict:
  """The steps from `state` on; fills `results` (status and metrics) and returns it.
  `first_loss`: the loss of the run's step 1 (None before it, or from a checkpoint that
  predates its recording), which the divergence rule compares with."""
  config, objective, dist = s.config, s.objective, s.dist
  start_step = step = int(state.step)
  tokens_per_step = int(np.prod(s.train_batches.batch_shape()))
  progress = metrics_lib.Progress(start_step, s.num_train_steps, tokens_per_step)
  train_step = jax.jit(make_train_step(s.model, objective, s.tx, s.schedule,
                                       config.loss_reduction), donate_argnums=0)
  eval_step = jax.jit(make_eval_step(s.model, objective))
  run_eval = lambda split: objective.summarize(evaluate(
      eval_step, state.params, s.eval_batches[split], dist, objective, zero_carry))
  start = {} if first_loss is None else {'loss': first_loss}
  save = lambda: ckpts.save(step, state, {'data': s.train_batches.state(), 'step': step,
                                          'first_loss': start.get('loss')})
  best = _Best(ckpts, _abstract(state.params))
  t_start = time.perf_counter()
  pending, interval = [], []  # this logging interval's metrics: on the device, then fetched
  every_step = jax.process_count() == 1  # one process reads SIGTERM at no cost; several agree
  while step < s.num_train_steps:
    position = s.train_batches.state()['position']
    reset = position == 0 or position >= s.steps_per_epoch
    batch = dist.put_batch(next(s.train_batches))
    state, train_metrics = train_step(state, batch, jnp.asarray(reset))
    step += 1
    pending.append(train_metrics)
    at_log = step % config.log_every_steps == 0 or step == s.num_train_steps
    at_eval = step % config.eval_every_steps == 0 and step < s.num_train_steps
    at_save = step % config.checkpoint_every_steps == 0 and step < s.num_train_steps
    stop_after = config.stop_after_steps
    stop = ((every_step or at_log) and preemption.agreed()) or bool(
        stop_after and step - start_step >= stop_after)
    if at_log or at_eval or at_save or stop:
      interval += _fetch_finite(pending, step, results, ckpts, workdir, start)
      pending = []
    if at_log:
      _log_train(step, interval, objective, writer, progress)
      interval = []
    with _not_counted(progress):
      if at_eval:
        valid = run_eval('valid')
        writer.write(step, 'valid', valid)
        logging.info('step %d valid: %s', step, _fmt(valid))
        best.offer(step, state.params, valid)
        stop = stop or preemption.agreed()  # a SIGTERM during the evaluation stops here
      if at_save or stop:
        save()
    if stop:
      results.update(status='preempted', step=step)
      logging.info('stopped at step %d with a checkpoint; rerun the same command to resume', step)
      return results
  train_time = time.perf_counter() - t_start
  save()  # the final checkpoint and evaluation finish even if SIGTERM comes during them
  final = {split: run_eval(split) for split in s.eval_batches}
  for split, values in final.items():
    writer.write(step, split, values)
    logging.info('final %s: %s', split, _fmt(values))
  best.offer(step, state.params, final['valid'])
  results.update(status='completed', step=step, valid=final['valid'], test=final['test'],
                 best_valid=best.valid, train_time_s=round(train_time, 1),
                 steps_this_run=step - start_step, devices=dist.num_devices,
                 processes=jax.process_count(), platform=jax.devices()[0].platform,
                 num_params=int(sum(x.size for x in jax.tree.leaves(state.params))))
  return results


class _Best:
  """The best validation so far (kept over resumption in `best/`) and its parameters."""

  def __init__(self, ckpts: workdir_lib.Checkpoints, abstract_params):
    self.ckpts, self.valid = ckpts, ckpts.best_valid(abstract_params)

  def offer(self, step: int, params, valid: dict) -> None:
    if self.valid is None or valid['loss'] < self.valid['loss']:
      self.valid = valid
      self.ckpts.save_best(step, params, valid)


def _fetch_finite(pending: list, step: int, results: dict, ckpts, workdir: str,
                   start: dict) -> list[dict]:
  """The host values of the metrics of the steps that end at `step`; stops the run at the first
  of them whose loss or gradient norm is not finite, or whose loss exceeds DIVERGENCE_FACTOR
  times the run's first loss (`start['loss']`, set here at step 1)."""
  fetched = jax.device_get(pending)
  for bad, values in enumerate(fetched, step - len(fetched) + 1):
    loss, grad_norm = float(values['loss']), float(values['grad_norm'])
    last = ckpts.latest_step()
    kept = (f'The last good checkpoint (step {last}) in {workdir} is untouched.'
            if last is not None else f'No checkpoint was saved in {workdir} before it.')
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
      results.update(status='diverged', step=bad,
                     message=f'non-finite loss {loss} (gradient norm {grad_norm}) at step {bad}')
      raise NonFiniteLoss(f'loss {loss}, gradient norm {grad_norm} at step {bad}: stopped. {kept}')
    start.setdefault('loss', loss)
    if start['loss'] > 0 and loss > DIVERGENCE_FACTOR * start['loss']:
      grew = (f'loss {loss:.4g} at step {bad} is more than {DIVERGENCE_FACTOR} times the loss '
              f'at step 1 ({start["loss"]:.4g})')
      results.update(status='diverged', step=bad, message=grew)
      raise Diverged(f'{grew}: the run diverged and stopped. {kept}')
  return fetched


@contextlib.contextmanager
def _not_counted(progress: metrics_lib.Progress):
  """Leaves the time of the block out of the steps/s that `progress` measures."""
  start = time.perf_counter()
  try:
    yield
  finally:
    progress.last_time += time.perf_counter() - start


def _log_train(step: int, interval: list, objective: objectives.Objective, writer,
               progress) -> None:
  """One training record: the mean of the interval's metrics, the last learning rate."""
  scalars = {k: float(np.mean([float(m[k]) for m in interval])) for k in interval[-1]}
  scalars['learning_rate'] = float(interval[-1]['learning_rate'])
  scalars.update(objective.derived(scalars['loss']))
  rate = progress.rate(step)
  writer.write(step, 'train', {**scalars, **rate})
  progress.line(step, {k: scalars[k] for k in ('loss', 'bpc', 'perplexity', 'accuracy')
                       if k in scalars}, rate)


def _fmt(values: dict) -> str:
  return ', '.join(f'{k} {v:.4f}' for k, v in values.items())
