"""Optimizers and learning-rate schedules from `config.optimizer`, built with optax.

Schedules: 'constant'; 'step' (Zaremba: the rate is multiplied by `decay_factor` once per epoch
after `decay_start_epoch` epochs); 'cosine' with linear warm-up. Global-norm clipping when
`grad_clip_norm` > 0.
"""
from __future__ import annotations

import jax.numpy as jnp
import optax

OPTIMIZERS = ('sgd', 'momentum', 'adam', 'adamw', 'adagrad')
SCHEDULES = ('constant', 'step', 'cosine')
# what the training step differentiates: the mean over tokens, or the sum over time steps of the
# mean over sequences (Zaremba's and TensorFlow's PTB code; their learning rates assume it)
LOSS_REDUCTIONS = ('token', 'sequence')


def make_schedule(opt, steps_per_epoch: int, num_train_steps: int) -> optax.Schedule:
  lr = opt.learning_rate
  name = opt.get('schedule', 'constant')
  if name == 'constant':
    return optax.constant_schedule(lr)
  if name == 'step':
    start, factor = opt.get('decay_start_epoch', 0), opt.get('decay_factor', 0.5)

    def schedule(step):
      epoch = jnp.floor_divide(step, steps_per_epoch)
      return lr * factor ** jnp.maximum(epoch + 1 - start, 0).astype(jnp.float32)
    return schedule
  if name == 'cosine':
    warmup = opt.get('warmup_steps', 0)
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup_steps=warmup, decay_steps=max(num_train_steps, warmup + 1),
        end_value=lr * opt.get('end_factor', 0.0))
  raise ValueError(f'config.optimizer.schedule={name!r} is not known; use one of '
                   + ', '.join(SCHEDULES))


def make_optimizer(opt, schedule: optax.Schedule) -> optax.GradientTransformation:
  name = opt.name
  if name == 'sgd':
    tx = optax.sgd(schedule)
  elif name == 'momentum':
    tx = optax.sgd(schedule, momentum=opt.get('momentum', 0.9), nesterov=opt.get('nesterov', False))
  elif name == 'adam':
    tx = optax.adam(schedule, b1=opt.get('b1', 0.9), b2=opt.get('b2', 0.999), eps=opt.get('eps', 1e-8))
  elif name == 'adamw':
    tx = optax.adamw(schedule, b1=opt.get('b1', 0.9), b2=opt.get('b2', 0.999),
                     eps=opt.get('eps', 1e-8), weight_decay=opt.get('weight_decay', 1e-4))
  elif name == 'adagrad':
    tx = optax.adagrad(schedule, initial_accumulator_value=opt.get('initial_accumulator', 0.1))
  else:
    raise ValueError(f'config.optimizer.name={name!r} is not known; use one of '
                     + ', '.join(OPTIMIZERS))
  clip = opt.get('grad_clip_norm', 0.0)
  return optax.chain(optax.clip_by_global_norm(clip), tx) if clip and clip > 0 else tx
