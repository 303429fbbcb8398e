"""The workdir of a run: the files that describe it and its checkpoints.

`config.json` (the config), `dataset.json` (the data's shape: its name, kind, vocabulary size,
classes, input features) and, for language models, `vocab.json` are what rebuilds the model
without the data; `record_config` and `record_dataset` refuse a workdir whose files describe a
different run, and `read_config` / `config_from_dict` read a config.json of any version (fields
renamed since are read through configs/common.py's `LEGACY`). `dataset.json` also keeps the
fingerprint of every data file the run reads (dataset 'text'), so that a resumed run refuses a
file whose contents changed (unless config.data.allow_changed_data).

`checkpoints/<step>/`: the train state plus JSON metadata (data position), the newest
`keep_checkpoints` kept; `best/<step>/`: the parameters with the lowest validation loss so far and
that validation's metrics. Orbax writes each step to a temporary directory and renames it when
complete, so a run killed mid-save leaves the previous checkpoint as the latest.
`restore_params` reads the parameters of any saved step without writing anything, and refuses a
damaged one in one line (`faults.RunFault`) where a training run sets it aside (`Checkpoints`).
"""
from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
from typing import Any, Callable, Optional, Union

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from jax.experimental import multihost_utils

from configs import common
from train import checksums, data, faults, files, lock
from train.data import fingerprint
from train.validation import ConfigError

# Fields that may change when a run is resumed (a section, or a field by its dotted name); any
# other difference means a different run.
RESUMABLE_FIELDS = ('num_train_steps', 'num_epochs', 'eval_every_steps', 'checkpoint_every_steps',
                    'keep_checkpoints', 'log_every_steps', 'eval_batch_size', 'distributed',
                    'stop_after_steps', 'data.cache', 'data.cache_dir', 'data.allow_changed_data')


class ConfigConflict(ConfigError):
  """The workdir holds a different run."""


def compare_config(workdir: str, config_json: str) -> None:
  """Refuses a config that conflicts with the one saved in `workdir/config.json` (ConfigConflict),
  a saved one that was damaged or edited (RunFault), and a workdir that holds checkpoints but lost
  its config.json; writes nothing."""
  path = os.path.join(workdir, 'config.json')
  new = json.loads(config_json)
  checksums.verify(workdir, ['config.json'])
  if not os.path.exists(path):
    if saved_steps(workdir) or saved_steps(workdir, 'best'):
      raise ConfigError(f'{workdir} holds checkpoints but no config.json, so the run they belong '
                        'to is unknown; restore config.json from a copy of the run, or move the '
                        'checkpoints away to start afresh')
    return
  old = files.read_json(path)
  if old is None:
    raise ConfigError(f'{path} is not readable JSON, so the workdir\'s run is unknown; restore '
                      'it from a copy, or use a new --workdir')
  # Both on top of today's defaults, the saved one upgraded: fields added since it was written,
  # and fields respelt, are not differences.
  a = files.flatten(config_from_dict(old, path).to_dict())
  b = files.flatten(config_from_dict(new, 'the config').to_dict())
  diffs = [f'{k}: {a.get(k)!r} -> {b.get(k)!r}' for k in sorted(set(a) | set(b))
           if not {k, k.split('.')[0]} & set(RESUMABLE_FIELDS) and a.get(k) != b.get(k)]
  if diffs:
    raise ConfigConflict(
        f'workdir {workdir} holds a run with a different config ({"; ".join(diffs[:5])}'
        f'{"; ..." if len(diffs) > 5 else ""}); use a new --workdir or the saved config')


def _in_step(what: str) -> None:
  """Waits for every process of a multi-process run at `what`: the files that process 0
  writes are read by all, and one reading while process 0 is halfway through replacing them (its
  checksums listing a file not yet written) would take the run for a damaged one."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(what)


def record_config(workdir: str, config_json: str) -> None:
  """Saves the config in `workdir/config.json` (with its checksum), or refuses what
  `compare_config` refuses."""
  compare_config(workdir, config_json)
  _in_step(f'config.json of {workdir} checked')
  if jax.process_index() == 0:
    text = files.json_text(json.loads(config_json), sort_keys=True)
    checksums.write(workdir, {'config.json': text})
  _in_step(f'config.json of {workdir} written')


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config from `workdir/config.json`, on top of today's defaults (fields added since
  the run keep their defaults)."""
  checksums.verify(workdir, ['config.json'])
  saved = files.read_json(os.path.join(workdir, 'config.json'))
  if saved is None:
    raise ConfigError(f'{workdir} holds no readable config.json: it is not a run directory '
                      '(one that main.py trained, or that train.export imported into)')
  return config_from_dict(saved, f'{workdir}/config.json')


def config_from_dict(saved: dict, where: str) -> ml_collections.ConfigDict:
  """A locked config: configs/common.py's defaults updated with `saved` (a config as JSON)."""
  config = common.base_config()
  saved = files.unflatten(common.upgrade(files.flatten(saved)))
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


_SHAPE_FIELDS = ('name', 'kind', 'vocab_size', 'num_classes', 'input_features', 'level')
_DATA_FILES = 'data_files'  # dataset.json's fingerprints of the files read (dataset 'text')
_SHAPE_RENAMED = {'task': 'name'}  # dataset.json's keys that earlier versions wrote: old -> today's


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


def _read_saved(workdir: str, name: str) -> Any:
  """The JSON value of the workdir's file `name` (None when missing or unreadable); dataset.json
  in today's keys."""
  value = files.read_json(os.path.join(workdir, name))
  return files.respelt(value, _SHAPE_RENAMED) if name == 'dataset.json' else value


def check_dataset(workdir: str, dataset: data.Dataset, allow_changed_data: bool = False) -> None:
  """Refuses data that no longer gives the shapes or vocabulary saved in `workdir`, and a data
  file whose contents changed since its fingerprint was saved there, unless `allow_changed_data`
  (a workdir saved before fingerprints were has none to compare)."""
  described = _dataset_files(dataset)
  checksums.verify(workdir, list(described))
  saved = {name: _read_saved(workdir, name) for name in described}
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
  _in_step(f'dataset.json of {workdir} checked')
  if jax.process_index() == 0:
    checksums.write(workdir, {name: files.json_text(value)
                              for name, value in _dataset_files(dataset).items()})
  _in_step(f'dataset.json of {workdir} written')


def read_dataset(workdir: str) -> Optional[data.Dataset]:
  """The run's data without its splits (what builds the model), or None when the workdir
  predates `dataset.json`. RunFault (one line naming the file) for a file that was changed,
  damaged or deleted after the run wrote it."""
  checksums.verify(workdir, ['dataset.json', 'vocab.json'])
  shape = _read_saved(workdir, 'dataset.json')
  if shape is None:
    if os.path.exists(os.path.join(workdir, 'dataset.json')):
      raise faults.RunFault(f'{workdir}/dataset.json is not readable JSON; restore it from a '
                            'copy of the run')
    return None
  vocab = files.read_json(os.path.join(workdir, 'vocab.json'))
  vocab = None if vocab is None else data.Vocabulary.from_json(vocab)
  if vocab is not None and shape.get('kind') == 'lm' and len(vocab) != shape.get('vocab_size'):
    raise faults.RunFault(f'{workdir}/vocab.json holds {len(vocab)} tokens, but dataset.json '
                          f'says the model reads {shape.get("vocab_size")}; restore vocab.json '
                          'from a copy of the run')
  return data.Dataset(splits={}, itos=None if vocab is None else list(vocab.itos), vocab=vocab,
                      **shape)


def _manager(directory: str, keep: int) -> ocp.CheckpointManager:
  """Orbax's manager of `directory`, after removing what interrupted saves left there (orbax's
  temporary directories, which it never reads as checkpoints) when this process holds the
  workdir's lock (train/lock.py)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=False)
  faults.drop_orbax_leftovers()
  with faults.writing(directory):
    if jax.process_index() == 0 and lock.held(os.path.dirname(directory)):
      _remove_unfinished(directory)  # only the lock's holder: another writer's save may be running
    return ocp.CheckpointManager(directory, options=options)


def _remove_unfinished(directory: str, step: Optional[int] = None) -> None:
  """Removes orbax's temporary directories (of `step`, or of every step) in `directory`."""
  name = '*' if step is None else str(step)
  for unfinished in glob.glob(os.path.join(directory, f'{name}.orbax-checkpoint-tmp*')):
    shutil.rmtree(unfinished)


class Checkpoints:
  """Keeps the last `keep` checkpoints under `workdir/checkpoints` and the best parameters by
  validation loss under `workdir/best`.

  Reading resumes from the newest checkpoint that restores: a damaged newer one (truncated or
  missing files) is moved aside to `<step>.damaged` with a warning, and when none restores the
  run stops with one line and nothing moved. A save that fails raises RunFault naming the step,
  the directory and the OS error, removes its own unfinished files and leaves the earlier
  checkpoints as they were (orbax deletes the oldest only after a save has completed)."""

  def __init__(self, workdir: str, keep: int):
    workdir = os.path.abspath(workdir)
    self.manager = _manager(os.path.join(workdir, 'checkpoints'), keep)
    self.best = _manager(os.path.join(workdir, 'best'), 1)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, meta: dict) -> None:
    _save(self.manager, step, f'checkpoint at step {step}',
          ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def save_best(self, step: int, params: Any, valid: dict) -> None:
    """The parameters of `step`, whose validation metrics `valid` are the best so far."""
    _save(self.best, step, f'best parameters at step {step}', ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        meta=ocp.args.JsonSave({'step': step, 'valid': valid})))

  def best_valid(self, abstract_params: Any) -> Optional[dict]:
    """The validation metrics of the newest best checkpoint that restores (its parameters are
    read too, shaped as `abstract_params`); None before the first evaluation, or when every
    best checkpoint was damaged (they are set aside)."""
    args = ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params),
                              meta=ocp.args.JsonRestore())
    found = _newest_restoring(self.best, lambda step: self.best.restore(step, args=args),
                              'best checkpoint', required=False)
    return None if found is None else found[1]['meta']['valid']

  def restore(self, abstract_state: Any) -> Optional[tuple[Any, dict]]:
    """The newest (state, meta) that restores, with arrays placed as in `abstract_state`; None
    if none was saved. RunFault when checkpoints exist and none restores."""
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                              meta=ocp.args.JsonRestore())

    def read(step):
      root = os.path.join(self.manager.directory, str(step))
      if _holds(root, 'params') and not _holds(root, 'state'):
        raise ConfigError(f'checkpoint {step} of {os.path.dirname(self.manager.directory)} '
                          'holds imported parameters, not a training state; train in a new '
                          '--workdir')
      restored = self.manager.restore(step, args=args)
      return restored['state'], restored['meta']

    found = _newest_restoring(self.manager, read, 'checkpoint', required=True)
    return None if found is None else found[1]

  def close(self) -> None:
    self.manager.close()
    self.best.close()


def _holds(root: str, item: str) -> bool:
  return os.path.isdir(os.path.join(root, item))


def _save(manager: ocp.CheckpointManager, step: int, what: str, args) -> None:
  """Saves `args` as `step` unless it exists; RunFault when the write fails."""
  if step in manager.all_steps():
    return
  directory = str(manager.directory)
  try:
    with faults.writing(directory, what, 'earlier checkpoints are untouched'):
      manager.save(step, args=args, force=True)
      manager.wait_until_finished()
  except faults.RunFault:
    with contextlib.suppress(OSError):
      _remove_unfinished(directory, step)
    raise


def _newest_restoring(manager: ocp.CheckpointManager, read: Callable[[int], Any], what: str,
                      required: bool) -> Optional[tuple[int, Any]]:
  """(step, read(step)) of the newest step of `manager` that `read` restores, after moving the
  damaged newer ones aside (with a warning each). When none restores: RunFault, nothing moved,
  if `required`; else all are moved aside and the result is None."""
  directory = str(manager.directory)
  damaged, found = [], None
  for step in reversed(manager.all_steps()):
    try:
      found = step, read(step)
      break
    except ConfigError:
      raise
    except Exception as e:  # noqa: BLE001 - a damaged checkpoint fails in many ways
      damaged.append((step, faults.reason(e)))
  if damaged and found is None and required:
    listing = '; '.join(f'step {step}: {why}' for step, why in damaged)
    raise faults.RunFault(
        f'no {what} in {directory} can be restored ({listing}); nothing was moved or deleted: '
        'restore the directory from a copy, or move it away to start the run afresh')
  for step, why in damaged:
    aside = _set_aside(directory, step)
    absl_logging.warning('%s %d in %s is damaged (%s): moved to %s; %s', what, step, directory, why,
                    aside, f'using step {found[0]}' if found else f'no {what} is left')
  if damaged:
    _in_step(f'checkpoints set aside in {directory}')
    manager.reload()
  return found


def _set_aside(directory: str, step: int) -> str:
  """Renames `directory/<step>` to `<step>.damaged` (`.damaged.2`, ... if taken), a name that
  orbax does not read as a step; returns the new path."""
  base = target = os.path.join(directory, f'{step}.damaged')
  number = 1
  while os.path.exists(target):
    number += 1
    target = f'{base}.{number}'
  if jax.process_index() == 0:
    with faults.writing(target, f'damaged checkpoint {step}', action='move'):
      os.rename(os.path.join(directory, str(step)), target)
  return target


def saved_steps(workdir: str, kind: str = 'checkpoints') -> list[int]:
  """The complete checkpoints under `workdir/<kind>` ('checkpoints' or 'best'), oldest first
  (orbax names a checkpoint by its step only once it is complete)."""
  directory = os.path.join(workdir, kind)
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return sorted(int(name) for name in names if name.isdigit())


Step = Union[None, str, int]


def _saved_listing(workdir: str) -> str:
  latest, best = saved_steps(workdir), saved_steps(workdir, 'best')
  return (f'saved steps: {", ".join(map(str, latest)) or "none"}; best: '
          f'{", ".join(map(str, best)) or "none"}')


def find_step(workdir: str, step: Step = None) -> tuple[str, int]:
  """(directory, step) of the checkpoint that `step` names: None or 'latest' the newest, 'best'
  the best by validation loss, an int (or its string) that step."""
  latest, best = saved_steps(workdir), saved_steps(workdir, 'best')
  if step in (None, 'latest'):
    if latest or best:
      return ('checkpoints', latest[-1]) if latest else ('best', best[-1])
    raise ConfigError(f'{workdir} holds no checkpoint yet')
  if step == 'best':
    if best:
      return 'best', best[-1]
    raise ConfigError(f'{workdir} holds no best checkpoint (no validation has run); '
                      f'{_saved_listing(workdir)}')
  try:
    number = int(step)
  except (TypeError, ValueError):
    raise ConfigError(f'step={step!r} is not best, latest or a step number') from None
  for kind, steps in (('checkpoints', latest), ('best', best)):
    if number in steps:
      return kind, number
  raise ConfigError(f'{workdir} has no checkpoint at step {number}; {_saved_listing(workdir)}')


def restore_params(workdir: str, step: Step = None) -> tuple[str, int, Any]:
  """(directory, step, parameters) of the checkpoint `step` names (see `find_step`), on the
  default device, read without opening a checkpoint manager (nothing in the workdir is written,
  and a damaged checkpoint is refused with RunFault, not moved)."""
  kind, number = find_step(workdir, step)
  root = os.path.join(os.path.abspath(workdir), kind, str(number))
  item = 'state' if _holds(root, 'state') else 'params'
  faults.drop_orbax_leftovers()
  try:
    restored = _read_item(os.path.join(root, item))
  except Exception as e:  # noqa: BLE001 - a damaged checkpoint fails in many ways
    raise faults.RunFault(f'checkpoint {number} in {os.path.join(workdir, kind)} is damaged '
                          f'({faults.reason(e)}); {_saved_listing(workdir)}; choose another '
                          'step') from None
  return kind, number, restored['params'] if item == 'state' else restored


def _read_item(path: str) -> Any:
  """The arrays saved in one item of a checkpoint, on the default device."""
  checkpointer = ocp.StandardCheckpointer()
  with _orbax_warnings_dropped():  # read item by item, orbax misses the manager's metadata
    metadata = checkpointer.metadata(path).item_metadata
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          metadata.tree if hasattr(metadata, 'tree') else metadata)
    return checkpointer.restore(path, target)


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
  _save(manager, step, f'parameters at step {step}', ocp.args.Composite(
      params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta)))
  manager.close()
