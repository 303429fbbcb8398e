"""Checkpoints in the workdir with orbax: the train state plus JSON metadata (data position).

Orbax writes each step to a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoint as the latest. `record_config` refuses a workdir whose
saved config describes a different run.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from train import files

# Fields that may change when a run is resumed; any other difference means a different run.
RESUMABLE_FIELDS = ('num_train_steps', 'num_epochs', 'eval_every_steps', 'checkpoint_every_steps',
                    'keep_checkpoints', 'log_every_steps', 'eval_batch_size', 'distributed',
                    'stop_after_steps')


class ConfigConflict(ValueError):
  pass


def record_config(workdir: str, config_json: str) -> None:
  """Saves the config in `workdir/config.json`, or refuses one that conflicts with it."""
  path = os.path.join(workdir, 'config.json')
  new = json.loads(config_json)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    a, b = files.flatten(old), files.flatten(new)
    diffs = [f'{k}: {a.get(k)!r} -> {b.get(k)!r}' for k in sorted(set(a) | set(b))
             if k.split('.')[0] not in RESUMABLE_FIELDS and a.get(k) != b.get(k)]
    if diffs:
      raise ConfigConflict(
          f'workdir {workdir} holds a run with a different config ({"; ".join(diffs[:5])}'
          f'{"; ..." if len(diffs) > 5 else ""}); use a new --workdir or the saved config')
  if jax.process_index() == 0:
    files.write_json(path, new, sort_keys=True)


class Checkpoints:
  """Keeps the last `keep` checkpoints under `workdir/checkpoints`."""

  def __init__(self, workdir: str, keep: int):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False)
    self.manager = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                                         options=options)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, meta: dict) -> None:
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(meta)), force=True)
    self.manager.wait_until_finished()

  def restore(self, abstract_state: Any) -> Optional[tuple[Any, dict]]:
    """The latest (state, meta), with arrays placed as in `abstract_state`; None if none saved."""
    step = self.manager.latest_step()
    if step is None:
      return None
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                      meta=ocp.args.JsonRestore()))
    return restored['state'], restored['meta']

  def close(self) -> None:
    self.manager.close()
