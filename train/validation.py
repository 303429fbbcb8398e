"""Checks of a training config, run before any data is loaded or anything is compiled.

Each problem raises `ConfigError` with one line naming the field and what would be right.
"""
from __future__ import annotations

from train import data, models, optim


class ConfigError(ValueError):
  """A configuration problem, reported as one line."""


def _positive_int(config, path: str, allow_zero: bool = False) -> None:
  node = config
  for part in path.split('.'):
    node = node[part]
  ok = isinstance(node, int) and not isinstance(node, bool) and (node >= 0 if allow_zero else node > 0)
  if not ok:
    raise ConfigError(f'config.{path}={node!r} must be a {"non-negative" if allow_zero else "positive"} integer')


def check_config(config) -> None:
  """Raises ConfigError for the first problem found in `config`."""
  if config.get('task') not in data.TASKS:
    raise ConfigError(f'config.task={config.get("task")!r} is not a known task; '
                      f'choose one of {", ".join(data.TASKS)}')
  for path in ('batch_size', 'eval_every_steps', 'checkpoint_every_steps', 'keep_checkpoints',
               'log_every_steps', 'model.num_layers', 'model.hidden_size'):
    _positive_int(config, path)
  if not config.get('num_epochs', 0) > 0:  # without epochs, the run is num_train_steps long
    _positive_int(config, 'num_train_steps')
  if config.get('num_steps') is not None:
    _positive_int(config, 'num_steps')
  if config.get('eval_batch_size') is not None:
    _positive_int(config, 'eval_batch_size')
  opt = config.optimizer
  if opt.name not in optim.OPTIMIZERS:
    raise ConfigError(f'config.optimizer.name={opt.name!r} is not known; use one of '
                      + ', '.join(optim.OPTIMIZERS))
  if opt.get('schedule', 'constant') not in optim.SCHEDULES:
    raise ConfigError(f'config.optimizer.schedule={opt.schedule!r} is not known; use one of '
                      + ', '.join(optim.SCHEDULES))
  if opt.get('loss_reduction', 'token') not in optim.LOSS_REDUCTIONS:
    raise ConfigError(f'config.optimizer.loss_reduction={opt.loss_reduction!r} is not known; use '
                      'one of ' + ', '.join(optim.LOSS_REDUCTIONS))
  if not opt.learning_rate > 0:
    raise ConfigError(f'config.optimizer.learning_rate={opt.learning_rate!r} must be positive')
  m = config.model
  if m.get('dtype', 'float32') not in models.DTYPES:
    raise ConfigError(f'config.model.dtype={m.dtype!r} is not known; use one of '
                      + ', '.join(models.DTYPES))
  if m.get('pooling', 'last') not in models.POOLINGS:
    raise ConfigError(f'config.model.pooling={m.pooling!r} is not known; use one of '
                      + ', '.join(models.POOLINGS))
  try:
    from lstm import StackedLSTM
    StackedLSTM(**models.stack_kwargs(m))
  except (ValueError, TypeError) as e:
    raise ConfigError(f'config.model: {e}') from None
