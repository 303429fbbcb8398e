"""Optimizers and schedules built from config.optimizer: every field they read is settable from
the command line and changes what optax builds."""
import os

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl import flags
from ml_collections import config_flags

from configs import common
from train import optim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _updates(tx, steps=4):
  """Updates of `tx` from fixed parameters over a few steps of gradients that change."""
  params = {'w': jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)}
  grads = jnp.asarray([[0.3, -0.2, 0.1], [0.05, -0.4, 0.25]])
  state = tx.init(params)
  out = []
  for step in range(steps):
    updates, state = tx.update({'w': grads * (-2.0) ** step}, state, params)
    params = optax.apply_updates(params, updates)
    out.append(np.asarray(updates['w']))
  return np.stack(out)


def _opt_config(**fields):
  o = common.base_config().optimizer
  o.grad_clip_norm = 0.0
  o.update(fields)
  return o


@pytest.mark.parametrize('name, field, value, reference', [
    ('adam', 'b1', 0.5, lambda lr: optax.adam(lr, b1=0.5)),
    ('adam', 'b2', 0.9, lambda lr: optax.adam(lr, b2=0.9)),
    ('adam', 'eps', 1e-1, lambda lr: optax.adam(lr, eps=1e-1)),
    ('adamw', 'weight_decay', 0.5, lambda lr: optax.adamw(lr, weight_decay=0.5)),
    ('adamw', 'b1', 0.5, lambda lr: optax.adamw(lr, b1=0.5, weight_decay=1e-4)),
    ('momentum', 'momentum', 0.5, lambda lr: optax.sgd(lr, momentum=0.5)),
    ('momentum', 'nesterov', True, lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True)),
    ('adagrad', 'initial_accumulator', 1.0,
     lambda lr: optax.adagrad(lr, initial_accumulator_value=1.0)),
])
def test_optimizer_fields_are_used(name, field, value, reference):
  lr = 0.1
  default = optim.make_optimizer(_opt_config(name=name), optax.constant_schedule(lr))
  changed = optim.make_optimizer(_opt_config(name=name, **{field: value}),
                                 optax.constant_schedule(lr))
  np.testing.assert_allclose(_updates(changed), _updates(reference(lr)), rtol=1e-6)
  assert np.max(np.abs(_updates(changed) - _updates(default))) > 1e-4


def test_cosine_end_factor_sets_the_final_rate():
  o = _opt_config(schedule='cosine', learning_rate=1.0, warmup_steps=0, end_factor=0.25)
  schedule = optim.make_schedule(o, steps_per_epoch=10, num_train_steps=100)
  assert float(schedule(100)) == pytest.approx(0.25)
  assert float(schedule(0)) == pytest.approx(1.0)


def test_step_schedule_is_zaremba_decay():
  """The rate is lr for the first decay_start_epoch epochs, then multiplied by decay_factor each
  epoch."""
  o = _opt_config(schedule='step', learning_rate=1.0, decay_start_epoch=4, decay_factor=0.5)
  schedule = optim.make_schedule(o, steps_per_epoch=10, num_train_steps=130)
  rates = [float(schedule(step)) for step in range(0, 130, 10)]
  assert rates == [1.0, 1.0, 1.0, 1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125,
                   0.00390625, 0.001953125]
  assert float(schedule(39)) == 1.0 and float(schedule(40)) == 0.5


@pytest.mark.parametrize('field, value', [('b1', 0.95), ('b2', 0.98), ('eps', 1e-6),
                                          ('nesterov', True), ('end_factor', 0.1),
                                          ('initial_accumulator', 0.2), ('weight_decay', 0.01)])
def test_every_optimizer_field_is_a_command_line_flag(field, value):
  argv = ['main.py', f'--config={os.path.join(ROOT, "configs", "stack.py")}',
          f'--config.optimizer.{field}={value}']
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  assert values.config.optimizer[field] == value
