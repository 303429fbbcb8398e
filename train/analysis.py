"""A sweep's runs as train.report reads them: each point's run (`sweep.json`, `results.json`,
`metrics.jsonl`, `config.json`), the settings (the points that differ only in seed) with their
labels, the tuning stage's choices and the paired comparisons with their family-wide adjustments.
Nothing here writes a file; train.plots draws and train.report writes from what it returns.
"""
from __future__ import annotations

import dataclasses
import fractions
import json
import math
import os
from typing import Any, Optional, Sequence

import numpy as np

from configs import common
from train import files, sweep as sweep_lib
from train.statistics import (ADJUSTMENTS, Metric, best_tuned_value, paired_difference,
                              pick_metric)

DEPTH = 'model.num_layers'
SKIP_INFERRED = ('seed', 'num_train_steps', 'num_epochs', 'eval_every_steps',
                 'checkpoint_every_steps', 'keep_checkpoints', 'log_every_steps', 'eval_batch_size',
                 'distributed', 'stop_after_steps')


# ----------------------------------------------------------------------------------------------
# Reading a sweep


@dataclasses.dataclass
class Run:
  name: str
  workdir: str
  seed: Any
  values: dict            # swept field -> value
  status: str             # completed, diverged, preempted, running, missing
  results: dict
  curve: list             # [(step, valid record)]
  diverged: bool = False

  @property
  def finished(self) -> bool:
    return self.status in ('completed', 'diverged')


def _read_curve(workdir: str) -> list:
  records = {}
  try:
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      for line in f:
        line = line.strip()
        if not line:
          continue
        try:
          record = json.loads(line)
        except ValueError:
          continue
        if record.get('split') == 'valid':
          records[int(record['step'])] = record  # a later record for a step wins
  except OSError:
    pass
  return sorted(records.items())


def _finite(results: dict, metric: Optional[Metric]) -> bool:
  for split in ('valid', 'test'):
    values = results.get(split)
    if not isinstance(values, dict):
      return False
    keys = [metric.key] if metric and metric.key in values else ['loss']
    if not all(isinstance(values.get(k), (int, float)) and math.isfinite(values[k]) for k in keys):
      return False
  return True


def _saved_fields(path: str) -> dict[str, Any]:
  """The dotted fields of a run's config.json as today's config reads them (fields renamed since
  read through configs/common.py's LEGACY, fields added since at their defaults); a config with
  fields of other code, only renamed."""
  from train import validation, workdir as workdir_lib
  saved = files.read_json(path) or {}
  try:
    return files.flatten(workdir_lib.config_from_dict(saved, path).to_dict())
  except validation.ConfigError:
    return common.upgrade(files.flatten(saved))


def read_sweep(sweep_dir: str) -> tuple[dict, list[Run]]:
  """(description, runs): sweep.json's description (or one inferred) and every point's run."""
  description = files.read_json(os.path.join(sweep_dir, 'sweep.json'))
  if description is None:
    names = sorted(d for d in os.listdir(sweep_dir)
                   if os.path.isfile(os.path.join(sweep_dir, d, 'config.json')))
    if not names:
      raise FileNotFoundError(f'{sweep_dir} has neither sweep.json nor workdirs with config.json')
    configs = {n: _saved_fields(os.path.join(sweep_dir, n, 'config.json')) for n in names}
    keys = sorted({k for c in configs.values() for k in c})
    fields = [k for k in keys if k.split('.')[0] not in SKIP_INFERRED
              and len({json.dumps(c.get(k)) for c in configs.values()}) > 1]
    description = {'config': None, 'fields': fields, 'axes': {k: [] for k in fields}, 'base': {},
                   'points': [{'name': n, 'seed': configs[n].get('seed'),
                               'values': {k: configs[n].get(k) for k in fields}} for n in names]}
  runs = []
  for point in description['points']:
    workdir = os.path.join(sweep_dir, point['name'])
    results = files.read_results(workdir)
    status = (results or {}).get('status') or ('missing' if not os.path.isdir(workdir)
                                               else 'not finished')
    runs.append(Run(point['name'], workdir, point.get('seed'), dict(point['values']), status,
                    results or {}, _read_curve(workdir)))
  return description, runs


def count_params(workdir: str) -> Optional[int]:
  """The number of parameters of the model that the run's config.json builds (its data loaded for
  the input shapes; nothing compiled or trained); None when the workdir's config cannot build a
  model here."""
  import jax
  from train import trainer, validation, workdir as workdir_lib
  try:
    setup = trainer.setup(workdir_lib.read_config(workdir))
  except (validation.ConfigError, ValueError, KeyError, OSError):
    return None
  sample = trainer.first_rows(setup.train_batches)
  shapes = jax.eval_shape(lambda: setup.model.init(jax.random.PRNGKey(0),
                                                   **setup.objective.model_inputs(sample)))
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(shapes['params'])))


def format_params(n: Optional[int], short: bool = False) -> str:
  """222066 -> '222,066', or with `short` '222k' (1.05M from a million on); '-' for None."""
  if n is None:
    return '-'
  if not short:
    return f'{n:,}'
  return f'{n / 1e6:.2f}M' if n >= 1_000_000 else f'{n / 1e3:.0f}k'


def choose_metric(runs: Sequence[Run]) -> Optional[Metric]:
  for run in runs:
    if isinstance(run.results.get('valid'), dict):
      metric = pick_metric(run.results['valid'])
      if metric:
        return metric
  for run in runs:
    for _, record in run.curve:
      metric = pick_metric(record)
      if metric:
        return metric
  return None


@dataclasses.dataclass
class Setting:
  values: dict
  runs: list
  label: str = ''
  _params: Any = dataclasses.field(default=False, repr=False)  # False: not looked up yet

  @property
  def num_params(self) -> Optional[int]:
    """The parameter count of the setting's model: what its runs wrote in results.json, or, when
    none did (every run diverged before writing it), computed from a run's config.json; None
    when neither can give it."""
    if self._params is False:
      counts = [r.results.get('num_params') for r in self.runs]
      counts = [int(n) for n in counts if isinstance(n, int)]
      self._params = max(set(counts), key=counts.count) if counts else None
      for run in self.runs if self._params is None else []:
        self._params = count_params(run.workdir)
        if self._params is not None:
          break
    return self._params

  def finals(self, metric: Metric, split: str) -> list[float]:
    return [metric.value(r.results[split]) for r in self.runs
            if r.status == 'completed' and not r.diverged]

  @property
  def num_diverged(self) -> int:
    return sum(r.diverged for r in self.runs)

  @property
  def num_unfinished(self) -> int:
    return sum(not r.finished for r in self.runs)


def group(description: dict, runs: Sequence[Run], metric: Optional[Metric]) -> list[Setting]:
  """Settings in the order of their first point; runs that differ only in seed share one."""
  for run in runs:
    run.diverged = run.status == 'diverged' or (run.status == 'completed'
                                                 and not _finite(run.results, metric))
  settings: dict[str, Setting] = {}
  for run in runs:
    key = json.dumps(run.values, sort_keys=True, default=repr)
    settings.setdefault(key, Setting(run.values, [])).runs.append(run)
  out = list(settings.values())
  for s in out:
    s.label = setting_label(description, s.values)
  return out


def short_names(fields: Sequence[str]) -> dict[str, str]:
  last = [k.split('.')[-1] for k in fields]
  return {k: (s if last.count(s) == 1 else k) for k, s in zip(fields, last)}


def display_value(v) -> str:
  """A value as the report shows it: as written, but a float that is a small fraction exactly
  (4/3 rather than 1.3333333333333333), which names no other value."""
  if isinstance(v, float) and len(repr(v)) > 8:
    fraction = fractions.Fraction(v).limit_denominator(12)
    if fraction.denominator > 1 and float(fraction) == v:
      return f'{fraction.numerator}/{fraction.denominator}'
  return v if isinstance(v, str) else repr(v)


def arm_name(row: dict) -> str:
  """A comparison row's arm without the fields its group names ('block=prenorm' in the group
  'num_layers=4'); the whole value where nothing is left."""
  whole = display_value(row['value'])
  group = (row['group'] or '').split(', ')
  return ', '.join(part for part in whole.split(', ') if part not in group) or whole


def setting_label(description: dict, values: dict, exclude: Sequence[str] = ()) -> str:
  """'between=relu' or 'between=none, residual=True': axis fields always, fields set only by
  extra points when they differ from the base config. A setting equal to the base config is
  named by the fields the extra points set to more than one value, this one among them (extras
  {between: none}, {between: relu} label the first 'between=none'), else 'base'."""
  exclude = [*exclude, *(description.get('tune') or {})]  # a tuned value is shown on its own
  fields = [k for k in description['fields'] if k not in exclude]
  short = short_names(description['fields'])
  axes, base = description.get('axes', {}), description.get('base', {})
  extra_values: dict[str, set] = {}
  for extra in description.get('extra') or []:
    for k, v in extra.items():
      extra_values.setdefault(k, set()).add(json.dumps(v, default=repr))

  def named_by_extras(k):
    set_by_extras = extra_values.get(k, set())
    return len(set_by_extras) > 1 and json.dumps(values.get(k), default=repr) in set_by_extras

  parts = [f'{short[k]}={display_value(values.get(k))}' for k in fields
           if k in axes or k not in base or values.get(k) != base.get(k)]
  parts = parts or [f'{short[k]}={display_value(values.get(k))}' for k in fields if named_by_extras(k)]
  return ', '.join(parts) or 'base'


# ----------------------------------------------------------------------------------------------
# The tuning stage, paired comparisons


def tuning_choices(description: dict, runs: Sequence[Run]) -> tuple[list[Run], list[dict]]:
  """(the evaluation runs: each setting's runs at its chosen value with an evaluation seed, one
  record per setting of its tuning runs and choice). A tuning run counts as an evaluation run
  only when its seed is also an evaluation seed (the first seed, in sweeps that tune on it);
  with fresh evaluation seeds no tuning run is. Without a tuned field: (all runs, [])."""
  tuned = list(description.get('tune') or {})
  if not tuned:
    return list(runs), []
  field = tuned[0]
  seeds = description.get('seeds')
  evaluation = (lambda r: True) if seeds is None else (
      lambda r: json.dumps(r.seed) in {json.dumps(s) for s in seeds})
  tune_names = {p['name'] for p in description['points'] if p.get('stage') == 'tune'}
  by_setting: dict[str, list[Run]] = {}
  for run in runs:
    by_setting.setdefault(sweep_lib.setting_key(run.values, tuned), []).append(run)
  final, records = [], []
  for setting_runs in by_setting.values():
    tuning = [r for r in setting_runs if r.name in tune_names]
    pending = [r.name for r in tuning if not r.finished]
    choice = None if pending else best_tuned_value([(r.values[field], r.results) for r in tuning])
    if choice is not None:
      final += [r for r in setting_runs
                if json.dumps(r.values[field]) == json.dumps(choice) and evaluation(r)]
    records.append({'values': setting_runs[0].values, 'tuning': tuning, 'choice': choice,
                    'pending': pending})
  return final, records


def chose_edge(description: dict, record: dict) -> bool:
  """Whether `record`'s setting (tuning_choices) chose the first or last value of the tuned list."""
  values = list(description['tune'].values())[0]
  return record['choice'] is not None and json.dumps(record['choice']) in (
      json.dumps(values[0]), json.dumps(values[-1]))


def tuning_scores(record: dict, field: str, value, metric: Metric) -> Optional[list[float]]:
  """The final validation metric of each tuning run of `record` (tuning_choices) at `value` of
  the tuned `field`: None while one has not finished (or none ran), [] where one diverged."""
  runs = [r for r in record['tuning'] if json.dumps(r.values[field]) == json.dumps(value)]
  if not runs or not all(r.finished for r in runs):
    return None
  if any(r.diverged for r in runs):
    return []
  return [metric.value(r.results.get('valid') or {}) for r in runs]


def comparison_specs(description: dict) -> list[dict]:
  """The sweep's comparisons: its 'compare' entry, or each entry of its list (train.sweep)."""
  compare = description.get('compare')
  return [] if not compare else list(compare) if isinstance(compare, list) else [compare]


def reference_name(description: dict, spec: dict, label: str) -> str:
  """The reference of one comparison in words: 'between=none', 'block=plain, between=none with
  the same num_layers', or (one reference for all) its setting's `label`."""
  if 'field' in spec:
    return f'{spec["field"]}={spec["reference"]}'
  if not spec.get('by'):
    return label
  short = short_names(description['fields'])
  name = ', '.join(f'{short.get(k, k)}={display_value(v)}' for k, v in spec['setting'].items())
  return name + f' with the same {", ".join(short.get(k, k) for k in spec["by"])}'


def comparisons(description: dict, settings: Sequence[Setting], metric: Metric,
                split: str) -> list[dict]:
  """Each arm against the reference arm of its group (the settings equal but for the compared
  field and the tuned one), paired by seed; for each of the sweep's comparisons in turn (a row's
  'spec' is its index in comparison_specs, 'reference_name' its reference in words)."""
  out = []
  for index, compare in enumerate(comparison_specs(description)):
    if 'setting' in compare:  # every setting against the one with these values, per value of `by`
      is_reference = lambda s: all(s.values.get(k) == v for k, v in compare['setting'].items())
      by = list(compare.get('by') or [])
      field, ignore = None, [k for k in description['fields'] if k not in by]
    else:
      field, by = compare['field'], []
      is_reference = lambda s: s.values.get(field) == compare['reference']
      ignore = [field, *(description.get('tune') or {})]
    arms = {k: {json.dumps(v) for v in values} for k, values in (compare.get('arms') or {}).items()}
    is_arm = lambda s: all(json.dumps(s.values.get(k)) in v for k, v in arms.items())
    groups = {}
    for s in settings:
      groups.setdefault(sweep_lib.setting_key(s.values, ignore), []).append(s)
    for members in groups.values():
      ref = next((s for s in members if is_reference(s)), None)
      if ref is None:
        continue
      for s in members:
        if s is not ref and is_arm(s):
          group_label = setting_label(description, s.values, ignore) if field or by else 'all'
          out.append({'group': group_label, 'arm': s.label,
                      'value': s.values.get(field) if field else s.label, 'reference': ref.label,
                      'spec': index,
                      'reference_name': reference_name(description, compare, ref.label),
                      'params': s.num_params, 'reference_params': ref.num_params,
                      'difference': paired_difference(_by_seed(s, metric, split),
                                                      _by_seed(ref, metric, split))})
  return out


def _by_seed(setting: Setting, metric: Metric, split: str) -> dict:
  """seed -> final metric for finished runs; NaN for diverged ones."""
  return {r.seed: (math.nan if r.diverged else metric.value(r.results.get(split) or {}))
          for r in setting.runs if r.finished}


def adjust(rows: Sequence[dict]) -> dict[str, list[float]]:
  """The paired t tests' p-values of `rows` adjusted as one family: {'Holm': [...], 'BH': [...]}
  in the rows' order."""
  p_values = [row['difference'].p_value for row in rows]
  return {name: method(p_values) for name, method in ADJUSTMENTS.items()}


def plateau_gain(setting: Setting, metric: Metric) -> float:
  """Mean over the setting's finished runs of the relative improvement of the validation metric
  over the last quarter of training (from the record nearest 3/4 of the steps to the last)."""
  gains = []
  for r in setting.runs:
    if r.diverged or not r.finished or len(r.curve) < 2:
      continue
    steps = [step for step, _ in r.curve]
    start = min(range(len(steps)), key=lambda i: abs(steps[i] - 0.75 * steps[-1]))
    a, b = metric.value(r.curve[start][1]), metric.value(r.curve[-1][1])
    gains.append((b - a if metric.higher_is_better else a - b) / abs(b))
  return float(np.mean(gains)) if gains else math.nan


def evaluated(sweep_dir: str):
  """(description, runs, metric, settings at their chosen values, tuning records) of a sweep."""
  description, runs = read_sweep(sweep_dir)
  metric = choose_metric(runs)
  group(description, runs, metric)  # marks diverged runs
  final_runs, records = tuning_choices(description, runs)
  return description, runs, metric, group(description, final_runs, metric), records
