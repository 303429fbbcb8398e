"""`load_run(workdir, step)`: a trained run as other code uses it, without its training data.

The workdir's `config.json`, `dataset.json` and `vocab.json` rebuild the model (see
train/workdir.py); the parameters come from the checkpoint `step` names: None or 'latest' the
newest, 'best' the best by validation loss, an int that step. Nothing in the workdir is written.

  run = train.load_run('runs/stack', step='best')
  ids = run.vocab.encode('the market ')
  logits, carry = run.model.apply({'params': run.params}, ids[None])

`language_model(run, direction)` gives a language model and its parameters as one plain
`models.LanguageModel`; for ELMo's biLM, its forward (or backward) model.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import ml_collections

from train import data, models, objectives, validation, workdir as workdir_lib

DIRECTIONS = ('forward', 'backward')


@dataclasses.dataclass
class Run:
  workdir: str
  config: ml_collections.ConfigDict
  dataset: data.Dataset  # the data's shapes and vocabulary; no splits
  objective: objectives.Objective
  model: nn.Module
  params: Any
  step: int
  checkpoint: str  # 'checkpoints' or 'best': where the parameters were read

  @property
  def vocab(self) -> Optional[data.Vocabulary]:
    """Language models: the vocabulary (`encode` / `decode`); None for other kinds of dataset."""
    return self.dataset.vocab


def load_run(workdir: str, step: workdir_lib.Step = None) -> Run:
  """The run in `workdir` with the parameters of checkpoint `step`; raises ConfigError (one line)
  when the workdir holds no run or no such checkpoint. A workdir written before `dataset.json`
  existed is rebuilt from its data."""
  config = workdir_lib.read_config(workdir)
  validation.check_config(config)
  dataset = workdir_lib.read_dataset(workdir)
  if dataset is None:
    try:
      dataset = data.load_dataset(config)
    except ValueError as e:
      raise validation.ConfigError(str(e)) from None
    dataset = dataclasses.replace(dataset, splits={})
  objective = objectives.for_dataset(dataset)
  kind, number, params = workdir_lib.restore_params(workdir, step)
  return Run(workdir, config, dataset, objective, objective.build_model(config), params, number,
             kind)


def language_model(run: Run, direction: str = 'forward') -> tuple[models.LanguageModel, Any]:
  """(model, params) of the run's language model reading text in `direction`: the model itself,
  or one direction of a biLM (its stack with the shared embedding and softmax)."""
  if run.vocab is None:
    raise validation.ConfigError(f'the run in {run.workdir} is a {run.dataset.kind} model of '
                                 f'dataset {run.config.dataset}, not a language model')
  if direction not in DIRECTIONS:
    raise validation.ConfigError(f'direction={direction!r} is not one of {", ".join(DIRECTIONS)}')
  if not isinstance(run.model, models.BiLanguageModel):
    if direction != 'forward':
      raise validation.ConfigError(f'the run in {run.workdir} has a forward model only; its '
                                   "direction is 'forward' (config.model.bilm=False)")
    return run.model, run.params
  fields = {f.name: getattr(run.model, f.name) for f in dataclasses.fields(models.LanguageModel)
            if f.name not in ('parent', 'name')}
  params = {k: v for k, v in run.params.items() if k not in DIRECTIONS}
  params['lstm'] = run.params[direction]
  return models.LanguageModel(**fields), params
