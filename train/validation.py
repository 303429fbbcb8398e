"""Checks of a training config, run before any data is loaded or anything is compiled.

Each problem raises `ConfigError` with one line naming the field and what would be right.
"""
from __future__ import annotations

from configs import common
from train import data, models, objectives, optim


class ConfigError(ValueError):
  """A configuration problem, reported as one line."""


def _positive_int(config, path: str, allow_zero: bool = False) -> None:
  node = common.field(config, path)
  ok = isinstance(node, int) and not isinstance(node, bool) and (node >= 0 if allow_zero else node > 0)
  if not ok:
    kind = 'non-negative' if allow_zero else 'positive'
    raise ConfigError(f'config.{path}={node!r} must be a {kind} integer')


def _one_of(value, path: str, choices) -> None:
  if value not in choices:
    raise ConfigError(f'config.{path}={value!r} is not known; use one of ' + ', '.join(choices))


def check_config(config) -> None:
  """Raises ConfigError for the first problem found in `config`."""
  if config.dataset not in data.DATASETS:
    raise ConfigError(f'config.dataset={config.dataset!r} is not a known dataset; '
                      f'choose one of {", ".join(data.DATASETS)}')
  for path in ('batch_size', 'eval_every_steps', 'checkpoint_every_steps', 'keep_checkpoints',
               'log_every_steps', 'model.num_layers', 'model.hidden_size'):
    _positive_int(config, path)
  if not config.num_epochs > 0:  # without epochs, the run is num_train_steps long
    _positive_int(config, 'num_train_steps')
  if config.bptt_length is not None:
    _positive_int(config, 'bptt_length')
  if config.eval_batch_size is not None:
    _positive_int(config, 'eval_batch_size')
  _one_of(config.loss_reduction, 'loss_reduction', objectives.LOSS_REDUCTIONS)
  opt = config.optimizer
  m = config.model
  _one_of(opt.name, 'optimizer.name', optim.OPTIMIZERS)
  _one_of(opt.schedule, 'optimizer.schedule', optim.SCHEDULES)
  if not opt.learning_rate > 0:
    raise ConfigError(f'config.optimizer.learning_rate={opt.learning_rate!r} must be positive')
  _one_of(m.dtype, 'model.dtype', models.DTYPES)
  _one_of(m.pooling, 'model.pooling', models.POOLINGS)
  try:
    from lstm import StackedLSTM
    StackedLSTM(**models.stack_kwargs(m))
  except (ValueError, TypeError) as e:
    raise ConfigError(f'config.model: {e}') from None
