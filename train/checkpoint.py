"""The workdir's checkpoints (orbax) and the files that describe its run.

`checkpoints/<step>/`: the train state plus JSON metadata (data position), the newest
`keep_checkpoints` kept; `best/<step>/`: the parameters with the lowest validation loss so far and
that validation's metrics. Orbax writes each step to a temporary directory and renames it when
complete, so a run killed mid-save leaves the previous checkpoint as the latest.

`config.json` (the config), `dataset.json` (the data's shape: kind, vocabulary size, classes,
input features) and, for language models, `vocab.json` are what rebuilds the model without the
data; `record_config` and `record_dataset` refuse a workdir whose files describe a different run.
`dataset.json` also keeps the fingerprint of every data file the run reads (task 'text'), so
that a resumed run refuses a file whose contents changed (unless
config.data.allow_changed_data).
`restore_params` reads the parameters of any saved step without writing anything.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any, Optional, Union

import jax
import ml_collections
import orbax.checkpoint as ocp

from configs import common
from train import data, files
from train.data import fingerprint
from train.validation import ConfigError

# Fields that may change when a run is resumed (a section, or a field by its dotted name); any
# other difference means a different run.
RESUMABLE_FIELDS = ('num_train_steps', 'num_epochs', 'eval_every_steps', 'checkpoint_every_steps',
                    'keep_checkpoints', 'log_every_steps', 'eval_batch_size', 'distributed',
                    'stop_after_steps', 'data.cache', 'data.cache_dir', 'data.allow_changed_data')


class ConfigConflict(ConfigError):
  """The workdir holds a different run."""


def record_config(workdir: str, config_json: str) -> None:
  """Saves the config in `workdir/config.json`, or refuses one that conflicts with it."""
  path = os.path.join(workdir, 'config.json')
  new = json.loads(config_json)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    a, b = files.flatten(old), files.flatten(new)
    diffs = [f'{k}: {a.get(k)!r} -> {b.get(k)!r}' for k in sorted(set(a) | set(b))
             if not {k, k.split('.')[0]} & set(RESUMABLE_FIELDS) and a.get(k) != b.get(k)]
    if diffs:
      raise ConfigConflict(
          f'workdir {workdir} holds a run with a different config ({"; ".join(diffs[:5])}'
          f'{"; ..." if len(diffs) > 5 else ""}); use a new --workdir or the saved config')
  if jax.process_index() == 0:
    files.write_json(path, new, sort_keys=True)


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config from `workdir/config.json`, on top of today's defaults (fields added since
  the run keep their defaults)."""
  saved = files.read_json(os.path.join(workdir, 'config.json'))
  if saved is None:
    raise ConfigError(f'{workdir} holds no readable config.json: it is not a run directory '
                      '(one that main.py trained, or that train.export imported into)')
  return config_from_dict(saved, f'{workdir}/config.json')


def config_from_dict(saved: dict, where: str) -> ml_collections.ConfigDict:
  """A locked config: configs/common.py's defaults updated with `saved` (a config as JSON)."""
  config = common.base_config()
  unknown = sorted(set(files.flatten(saved)) - set(files.flatten(config.to_dict())))
  if unknown:
    raise ConfigError(f'{where} has fields that configs/common.py does not declare: '
                      f'{", ".join(unknown[:5])}; it was written by other code')
  try:
    config.update(saved)
  except TypeError as e:
    raise ConfigError(f'{where} does not fit configs/common.py: {e}') from None
  config.lock()
  return config


_SHAPE_FIELDS = ('task', 'kind', 'vocab_size', 'num_classes', 'input_features', 'level')
_DATA_FILES = 'data_files'  # dataset.json's fingerprints of the files read (task 'text')


def _describe(dataset: data.Dataset) -> dict[str, Any]:
  described = {name: getattr(dataset, name) for name in _SHAPE_FIELDS}
  if dataset.data_files:
    described[_DATA_FILES] = dataset.data_files
  return described


def _dataset_files(dataset: data.Dataset) -> dict[str, Any]:
  written = {'dataset.json': _describe(dataset)}
  if dataset.vocab is not None:
    written['vocab.json'] = dataset.vocab.to_json()
  return written


def check_dataset(workdir: str, dataset: data.Dataset, allow_changed_data: bool = False) -> None:
  """Refuses data that no longer gives the shapes or vocabulary saved in `workdir`, and a data
  file whose contents changed since its fingerprint was saved there, unless `allow_changed_data`
  (a workdir saved before fingerprints were has none to compare)."""
  described = _dataset_files(dataset)
  saved = {name: files.read_json(os.path.join(workdir, name)) for name in described}
  saved_files = (saved['dataset.json'] or {}).pop(_DATA_FILES, None) or {}
  described['dataset.json'].pop(_DATA_FILES, None)
  for name, value in described.items():
    if saved[name] is not None and saved[name] != json.loads(json.dumps(value)):
      raise ConfigConflict(f'the data of {workdir} changed since the run started: it no longer '
                           f'gives the {name} saved there; use a new --workdir or the old data')
  for field, new in (dataset.data_files or {}).items():
    old = saved_files.get(field)
    if old is None or fingerprint.content(old) == fingerprint.content(new):
      continue
    change = (f'config.data.{field}={new["file"]!r} changed since the run in {workdir} saved its '
              f'fingerprint ({fingerprint.describe_change(old, new)})')
    if not allow_changed_data:
      raise ConfigConflict(f'{change}; put the original file back, train in a new --workdir, or '
                           'pass --config.data.allow_changed_data=True to go on with it as it is')
    logging.getLogger('absl').warning('%s; going on with it as it is '
                                      '(config.data.allow_changed_data)', change)


def record_dataset(workdir: str, dataset: data.Dataset, allow_changed_data: bool = False) -> None:
  """Saves `dataset.json` (with the data files' fingerprints) and `vocab.json` for a language
  model, or refuses data that `check_dataset` refuses."""
  check_dataset(workdir, dataset, allow_changed_data)
  if jax.process_index() == 0:
    for name, value in _dataset_files(dataset).items():
      files.write_json(os.path.join(workdir, name), value)


def read_dataset(workdir: str) -> Optional[data.Dataset]:
  """The run's data without its splits (what builds the model), or None when the workdir
  predates `dataset.json`."""
  shape = files.read_json(os.path.join(workdir, 'dataset.json'))
  if shape is None:
    return None
  vocab = files.read_json(os.path.join(workdir, 'vocab.json'))
  vocab = None if vocab is None else data.Vocabulary.from_json(vocab)
  return data.Dataset(splits={}, itos=None if vocab is None else list(vocab.itos), vocab=vocab,
                      **shape)


def _manager(directory: str, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(directory, options=options)


class Checkpoints:
  """Keeps the last `keep` checkpoints under `workdir/checkpoints` and the best parameters by
  validation loss under `workdir/best`."""

  def __init__(self, workdir: str, keep: int):
    workdir = os.path.abspath(workdir)
    self.manager = _manager(os.path.join(workdir, 'checkpoints'), keep)
    self.best = _manager(os.path.join(workdir, 'best'), 1)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, meta: dict) -> None:
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(meta)), force=True)
    self.manager.wait_until_finished()

  def save_best(self, step: int, params: Any, valid: dict) -> None:
    """The parameters of `step`, whose validation metrics `valid` are the best so far."""
    if step in self.best.all_steps():
      return
    self.best.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        meta=ocp.args.JsonSave({'step': step, 'valid': valid})), force=True)
    self.best.wait_until_finished()

  def best_valid(self) -> Optional[dict]:
    """The validation metrics of the best checkpoint; None before the first evaluation."""
    step = self.best.latest_step()
    if step is None:
      return None
    return self.best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
                             )['meta']['valid']

  def restore(self, abstract_state: Any) -> Optional[tuple[Any, dict]]:
    """The latest (state, meta), with arrays placed as in `abstract_state`; None if none saved."""
    step = self.manager.latest_step()
    if step is None:
      return None
    if not os.path.isdir(os.path.join(self.manager.directory, str(step), 'state')):
      raise ConfigError(f'checkpoint {step} of {os.path.dirname(self.manager.directory)} '
                           'holds imported parameters, not a training state; train in a new '
                           '--workdir')
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                      meta=ocp.args.JsonRestore()))
    return restored['state'], restored['meta']

  def close(self) -> None:
    self.manager.close()
    self.best.close()


def saved_steps(workdir: str, kind: str = 'checkpoints') -> list[int]:
  """The complete checkpoints under `workdir/<kind>` ('checkpoints' or 'best'), oldest first
  (orbax names a checkpoint by its step only once it is complete)."""
  directory = os.path.join(workdir, kind)
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return sorted(int(name) for name in names if name.isdigit())


Step = Union[None, str, int]


def find_step(workdir: str, step: Step = None) -> tuple[str, int]:
  """(directory, step) of the checkpoint that `step` names: None or 'latest' the newest, 'best'
  the best by validation loss, an int (or its string) that step."""
  latest, best = saved_steps(workdir), saved_steps(workdir, 'best')
  saved = f'saved steps: {", ".join(map(str, latest)) or "none"}; best: ' \
          f'{", ".join(map(str, best)) or "none"}'
  if step in (None, 'latest'):
    if latest or best:
      return ('checkpoints', latest[-1]) if latest else ('best', best[-1])
    raise ConfigError(f'{workdir} holds no checkpoint yet')
  if step == 'best':
    if best:
      return 'best', best[-1]
    raise ConfigError(f'{workdir} holds no best checkpoint (no validation has run); {saved}')
  try:
    number = int(step)
  except (TypeError, ValueError):
    raise ConfigError(f'step={step!r} is not best, latest or a step number') from None
  for kind, steps in (('checkpoints', latest), ('best', best)):
    if number in steps:
      return kind, number
  raise ConfigError(f'{workdir} has no checkpoint at step {number}; {saved}')


def restore_params(workdir: str, step: Step = None) -> tuple[str, int, Any]:
  """(directory, step, parameters) of the checkpoint `step` names (see `find_step`), on the
  default device, read without opening a checkpoint manager (nothing in the workdir is
  written)."""
  kind, number = find_step(workdir, step)
  root = os.path.join(os.path.abspath(workdir), kind, str(number))
  item = 'state' if os.path.isdir(os.path.join(root, 'state')) else 'params'
  checkpointer = ocp.StandardCheckpointer()
  with _orbax_warnings_dropped():  # read item by item, orbax misses the manager's metadata
    metadata = checkpointer.metadata(os.path.join(root, item)).item_metadata
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          metadata.tree if hasattr(metadata, 'tree') else metadata)
    restored = checkpointer.restore(os.path.join(root, item), target)
  return kind, number, restored['params'] if item == 'state' else restored


class _DropOrbax(logging.Filter):
  def filter(self, record) -> bool:
    return record.levelno >= logging.ERROR or '/orbax/' not in record.pathname


@contextlib.contextmanager
def _orbax_warnings_dropped():
  logger, dropped = logging.getLogger('absl'), _DropOrbax()
  logger.addFilter(dropped)
  try:
    yield
  finally:
    logger.removeFilter(dropped)


def save_params(workdir: str, step: int, params: Any, meta: dict) -> None:
  """A checkpoint of parameters only (an imported model), as `checkpoints/<step>/params`."""
  manager = _manager(os.path.join(os.path.abspath(workdir), 'checkpoints'), 1)
  manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                             meta=ocp.args.JsonSave(meta)), force=True)
  manager.wait_until_finished()
  manager.close()
