"""Optimizers and learning-rate schedules from `config.optimizer`, built with optax.

Schedules: 'constant'; 'step' (Zaremba: the rate is multiplied by `decay_factor` once per epoch
after `decay_start_epoch` epochs); 'cosine' with linear warm-up. Global-norm clipping when
`grad_clip_norm` > 0.
"""
from __future__ import annotations

import optax

OPTIMIZERS = ('sgd', 'momentum', 'adam', 'adamw', 'adagrad')
SCHEDULES = ('constant', 'step', 'cosine')


def make_schedule(opt_config, steps_per_epoch: int, num_train_steps: int) -> optax.Schedule:
  lr = opt_config.learning_rate
  name = opt_config.schedule
  if name == 'constant':
    return optax.constant_schedule(lr)
  if name == 'step':
    # The rate is lr * factor**(epoch + 1 - start) from epoch start - 1 on: optax's staircase
    # exponential decay, begun (start - 1) epochs in (at step 0 with one decay done if start is 0).
    start, factor = opt_config.decay_start_epoch, opt_config.decay_factor
    return optax.exponential_decay(lr * factor ** max(1 - start, 0), steps_per_epoch, factor,
                                   transition_begin=max(start - 1, 0) * steps_per_epoch,
                                   staircase=True)
  if name == 'cosine':
    warmup = opt_config.warmup_steps
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup_steps=warmup, decay_steps=max(num_train_steps, warmup + 1),
        end_value=lr * opt_config.end_factor)
  raise ValueError(f'config.optimizer.schedule={name!r} is not known; use one of '
                   + ', '.join(SCHEDULES))


def make_optimizer(opt_config, schedule: optax.Schedule) -> optax.GradientTransformation:
  o = opt_config
  if o.name == 'sgd':
    tx = optax.sgd(schedule)
  elif o.name == 'momentum':
    tx = optax.sgd(schedule, momentum=o.momentum, nesterov=o.nesterov)
  elif o.name == 'adam':
    tx = optax.adam(schedule, b1=o.b1, b2=o.b2, eps=o.eps)
  elif o.name == 'adamw':
    tx = optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay)
  elif o.name == 'adagrad':
    tx = optax.adagrad(schedule, initial_accumulator_value=o.initial_accumulator)
  else:
    raise ValueError(f'config.optimizer.name={o.name!r} is not known; use one of '
                     + ', '.join(OPTIMIZERS))
  clip = o.grad_clip_norm
  return optax.chain(optax.clip_by_global_norm(clip), tx) if clip and clip > 0 else tx
