"""Sweeps: a grid of training runs, one workdir and one process per point, resumable.

  python -m train.sweep --config=configs/ablation.py:ptb --sweep_dir=runs/ablation_ptb [--parallel=2]
  python -m train.sweep --config=configs/ablation.py:ptb --sweep_dir=runs/ablation_ptb --print_commands
  python -m train.sweep --config=configs/ablation.py:ptb --sweep_dir=runs/ablation_ptb --slurm=sweep.sh
  python -m train.sweep --config=configs/ablation.py:ptb --sweep_dir=runs/ablation_ptb --dry_run

A sweep config is an ordinary training config file: `get_config(arg)` returns the ConfigDict that
`main.py` trains (so any point can be run, or rerun, by hand with main.py), and a second function
`get_sweep(arg)` in the same file returns the grid as a plain dict:

  def get_sweep(arg=None):
    return {'axes': {'model.between': ['none', 'relu'], 'model.num_layers': [2, 4, 8]},
            'seeds': [0, 1, 2],                                  # sets config.seed
            'extra': [{'model.num_layers': 8, 'model.residual': True}]}

The points are the product of the axes plus each extra point (a dict of overrides), each with
every seed, seeds outermost (every setting's first seed runs before any second seed). An extra that
lands on a grid point is dropped. Each point runs as

  python main.py --config=<the same file:arg> --workdir=<sweep_dir>/<name> --config.K=V ...

in its own workdir `<name>` = the point's own overrides with the last part of each field name,
e.g. `between=relu,num_layers=4,seed=1` (`num_layers=8,residual=True,seed=0` for the extra). Fields
given to the sweep as `--config.K=V` are passed on to every point (e.g. `--config.num_train_steps=20`
for a smoke test); they may not name a swept field.

Tuning (equal tuning per arm): `'tune': {'optimizer.learning_rate': [1e-3, 3e-3, 1e-2]}` makes
the sweep run in two stages. The tuning stage runs every setting at every value with the tuning
seeds (`'tune_seeds'`, default the first seed); once all of a setting's tuning runs have finished,
the value with the best final validation metric, averaged over the tuning seeds, is its choice,
and the seeds stage runs that setting at that value with every seed of `'seeds'`. A value with a
diverged tuning run is never chosen. A tuning seed that is also an evaluation seed (the default)
makes its tuning run at the chosen value that seed's evaluation run; with `'tune_seeds'` disjoint
from `'seeds'` (e.g. tune on [100, 101], evaluate on [0, 1, 2, 3, 4]) every evaluation run is
fresh, and train.report counts no tuning run among the evaluation runs. `'extend': {'below':
[3e-4], 'above': [3e-2]}` grows a grid whose edge was chosen: no seed runs before every setting
is tuned, and while any setting chose the first (last) value, the next value of 'below' ('above')
is tuned for every setting before any seed runs. `'compare': {'field': 'model.between',
'reference': 'none'}` tells the report which arm the others are paired against (within each
group of settings equal but for that field); `'compare': {'setting': {...}}` pairs every setting against the one
with those values, and `'by': ['model.cell_clip']` does that within each value of the fields
named; `'arms': {'model.block': ['residual', 'prenorm']}` pairs only the settings with one of
those values (the reference is found among all). A list of such entries makes one comparison of
each, the report adjusting all of them together. Point names then carry the tuned field, e.g.
`between=relu,num_layers=4,learning_rate=0.003,seed=1`.

Points run with JAX's persistent compilation cache (`$JAX_COMPILATION_CACHE_DIR`, by default
`jax/` in the project's cache directory, `~/.cache/stacked_lstm`), so a setting's later seeds and
resumed points do not compile again what an earlier point compiled.

A point whose workdir holds `results.json` with status `completed` or `diverged`, and whose saved
`config.json` is the config the sweep would run now, is skipped; any other point runs, and main.py
resumes a preempted or killed one from its checkpoint, so a sweep that is stopped and started
again loses nothing. A finished point whose config differs (another `--config.num_train_steps`,
a sweep directory reused) stops the sweep with one line naming the field, unless
`--changed_points=rerun` (its workdir is moved to `<name>.replaced` and it runs again) or
`--changed_points=accept` (it counts as finished). A point whose workdir another process holds
(train/lock.py: a point still running from an earlier sweep) is not started. Ctrl-C or SIGTERM
stops the sweep: the running points get SIGTERM, save a checkpoint and exit (status
`preempted`); if the sweep itself is killed, its points get SIGTERM all the same. Each point's
console output goes to `<workdir>/log.txt`; the sweep logs one line per point start and finish
with the status and the final metric. `<sweep_dir>/sweep.json` describes the grid and its points
(the report reads it), written once the sweep holds the lock of `<sweep_dir>` (a second sweep
there is refused before it writes anything); `--dry_run` writes nothing.
"""
from __future__ import annotations

import copy
import ctypes
import dataclasses
import importlib.util
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures
from typing import Any, Callable, Optional, Sequence

import ml_collections

from lstm import cache
from configs import common
from train import faults, files, lock, statistics
from train.cli import format_value

FINISHED = ('completed', 'diverged')
IN_USE = 'in use'  # a point not started because another process holds its workdir
# Fields that do not change what a finished run computed: a point that differs from the sweep's
# config only in these still counts as finished.
NOT_COMPARED = ('keep_checkpoints', 'log_every_steps', 'checkpoint_every_steps',
                'stop_after_steps', 'distributed', 'keep_freed_memory', 'data.cache',
                'data.cache_dir', 'data.allow_changed_data')
CHANGED_POINTS = ('stop', 'rerun', 'accept')
MAIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'main.py')
SWEEP_KEYS = ('axes', 'seeds', 'extra', 'tune', 'tune_seeds', 'extend', 'compare')


class SweepError(ValueError):
  """A problem with a sweep definition, reported as one line."""


@dataclasses.dataclass
class Point:
  name: str                   # the workdir's name under the sweep directory
  overrides: dict[str, Any]   # dotted field -> value, the point's own (seed included)
  values: dict[str, Any]      # every swept field -> its value in this point's config (no seed)
  seed: int
  config: Any = None          # the point's full training config
  stage: str = 'grid'         # 'grid' (no tuning), 'tune' or 'seeds'


# ----------------------------------------------------------------------------------------------
# Grid expansion


def _comparison_ok(spec, axes: dict) -> bool:
  """Whether `spec` is one comparison that sweep['compare'] may hold (see the module docstring)."""
  if not isinstance(spec, dict):
    return False
  if set(spec) == {'field', 'reference'}:
    return spec['field'] in axes
  return ('setting' in spec and set(spec) <= {'setting', 'by', 'arms'}
          and isinstance(spec['setting'], dict) and isinstance(spec.get('by', []), (list, tuple))
          and all(isinstance(k, str) and k not in spec['setting'] for k in spec.get('by', []))
          and isinstance(spec.get('arms', {}), dict)
          and all(isinstance(v, (list, tuple)) and v for v in spec.get('arms', {}).values()))


def get_field(config, key: str):
  if key in common.LEGACY:  # a field older sweep configs name, read from today's fields
    return common.read_legacy(config, key)
  try:
    return common.field(config, key)
  except (KeyError, AttributeError, TypeError):
    raise SweepError(f'sweep field {key!r} is not a field of the config') from None


def apply_overrides(config, overrides: dict[str, Any]):
  """A copy of `config` (a ConfigDict) with the dotted `overrides` set; the copy is locked, so a
  misspelt field or a value of the wrong type is an error."""
  new = copy.deepcopy(config)  # types and placeholders kept
  new.lock()
  for key, value in common.upgrade(overrides, files.flatten(config.to_dict())).items():
    *path, last = key.split('.')
    node = new
    for part in path:
      node = get_field(node, part)
    if not isinstance(node, ml_collections.ConfigDict) or last not in node:
      raise SweepError(f'sweep field {key!r} is not a field of the config')
    try:
      node[last] = value
    except (TypeError, ValueError, KeyError, AttributeError) as e:
      raise SweepError(f'sweep field {key!r} cannot be set to {value!r}: {e}') from None
  return new


def _short_names(keys: Sequence[str]) -> dict[str, str]:
  """Last part of each dotted key, or the whole key where two share a last part."""
  last = [k.split('.')[-1] for k in keys]
  return {k: (s if last.count(s) == 1 and s != 'seed' else k) for k, s in zip(keys, last)}


def _name_part(value) -> str:
  return re.sub(r'[^A-Za-z0-9._+-]', '_', format_value(value))


def check_sweep(sweep: Any) -> dict:
  if not isinstance(sweep, dict):
    raise SweepError(f'get_sweep() must return a dict with keys {SWEEP_KEYS}, not {type(sweep)}')
  unknown = set(sweep) - set(SWEEP_KEYS)
  if unknown:
    raise SweepError(f'sweep keys {sorted(unknown)} are not known; use {", ".join(SWEEP_KEYS)}')
  axes = dict(sweep.get('axes') or {})
  extra = list(sweep.get('extra') or [])
  tune = dict(sweep.get('tune') or {})
  for key, values in [*axes.items(), *tune.items()]:
    if key == 'seed':
      raise SweepError("give seeds as sweep['seeds'], not as an axis")
    if not isinstance(values, (list, tuple)) or not values:
      raise SweepError(f'sweep axis {key!r} must be a non-empty list of values')
    if len(set(map(format_value, values))) != len(values):
      raise SweepError(f'sweep axis {key!r} repeats a value: {values}')
  for point in extra:
    if not isinstance(point, dict) or not point or 'seed' in point:
      raise SweepError(f'sweep extra points must be non-empty dicts of overrides without seed; '
                       f'got {point!r}')
  seeds = _check_seeds(sweep.get('seeds'), 'seeds')
  tune_seeds = _check_seeds(sweep.get('tune_seeds'), 'tune_seeds')
  if len(tune) > 1:
    raise SweepError(f"sweep['tune'] names one field to tune, not {sorted(tune)}")
  for key in tune:
    if key in axes or any(key in point for point in extra):
      raise SweepError(f'the tuned field {key!r} may not also be an axis or set by an extra point')
  if tune_seeds is not None and not tune:
    raise SweepError("sweep['tune_seeds'] needs sweep['tune']")
  extend = _check_extend(sweep.get('extend'), tune)
  compare = sweep.get('compare')
  for spec in compare if isinstance(compare, list) and compare else [compare]:
    if spec is not None and not _comparison_ok(spec, axes):
      raise SweepError("sweep['compare'] must be {'field': <an axis>, 'reference': <its value>} "
                       "or {'setting': {<field>: <value>, ...}} with an optional 'by': [<field>, "
                       "...] not among the setting's fields and an optional 'arms': {<field>: "
                       f"[<value>, ...]}}, or a list of those; got {spec!r}")
  return {'axes': axes, 'seeds': seeds, 'extra': extra, 'tune': tune,
          'tune_seeds': tune_seeds, 'extend': extend, 'compare': compare}


def _check_extend(extend, tune: dict) -> Optional[dict]:
  """sweep['extend'] as {'below': [...], 'above': [...]}, or None when not given."""
  if extend is None:
    return None
  if not tune:
    raise SweepError("sweep['extend'] needs sweep['tune']")
  if not isinstance(extend, dict) or not extend or set(extend) - {'below', 'above'} \
      or not all(isinstance(v, (list, tuple)) and v for v in extend.values()):
    raise SweepError("sweep['extend'] must be {'below': [values], 'above': [values]} (either or "
                     "both): the values the tuned list gains, one at a time and in that order, "
                     f"beyond its first and its last; got {extend!r}")
  (key, values), = tune.items()
  every = [*values, *extend.get('below', []), *extend.get('above', [])]
  if len(set(map(format_value, every))) != len(every):
    raise SweepError(f"sweep['extend'] repeats a value of the tuned list of {key!r} or one of its "
                     f'own: {every}')
  # the values in the order the grid would hold them once every one had joined
  line = [*reversed(extend.get('below', [])), *values, *extend.get('above', [])]
  numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in line)
  if not numbers or not (all(a < b for a, b in zip(line, line[1:]))
                         or all(a > b for a, b in zip(line, line[1:]))):
    raise SweepError(f"sweep['extend'] needs numbers in order: the tuned list of {key!r} sorted, "
                     "'below' going on past its first value and 'above' past its last, each "
                     f'nearest first; in grid order they would be {line}')
  return {side: list(extend[side]) for side in ('below', 'above') if side in extend}


def _check_seeds(seeds, key: str):
  if seeds is not None and (not isinstance(seeds, (list, tuple)) or not seeds
                            or not all(isinstance(s, int) for s in seeds)
                            or len(set(seeds)) != len(seeds)):
    raise SweepError(f"sweep[{key!r}] must be a non-empty list of distinct integers: {seeds!r}")
  return None if seeds is None else list(seeds)


def swept_fields(sweep: dict) -> list[str]:
  """The fields the points set (the tuned one last), seed excluded."""
  keys = list(sweep['axes'])
  for point in sweep['extra']:
    keys += [k for k in point if k not in keys]
  return keys + list(sweep['tune'])


def _settings(config, sweep: dict) -> list[dict]:
  """The grid's settings (the product of the axes, then the extra points), the tuned field not
  set."""
  axes = sweep['axes']
  settings = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())] if axes else []
  settings += [dict(p) for p in sweep['extra']]
  for setting in settings:
    for key, value in setting.items():
      if value is None and get_field(config, key) is not None:
        raise SweepError(f'sweep field {key!r} cannot be set to None from the command line')
  return settings


def _make_points(config, sweep: dict, runs) -> list[Point]:
  """Points for (setting, seed, stage) triples in order; duplicates dropped."""
  keys = swept_fields(sweep)
  short = _short_names(keys)
  points, seen, names = [], set(), set()
  for setting, seed, stage in runs:
    overrides = {**setting, 'seed': seed}
    point_config = apply_overrides(config, overrides)
    values = {k: get_field(point_config, k) for k in keys}
    identity = json.dumps([values, seed], sort_keys=True, default=repr)
    if identity in seen:
      continue
    seen.add(identity)
    ordered = [k for k in keys if k in setting]
    name = ','.join([f'{short[k]}={_name_part(setting[k])}' for k in ordered] + [f'seed={seed}'])
    if name in names:
      raise SweepError(f'two sweep points would share the workdir name {name!r}')
    names.add(name)
    points.append(Point(name=name, overrides=overrides, values=values, seed=seed,
                        config=point_config, stage=stage))
  return points


def _seeds(config, sweep: dict) -> list[int]:
  """The evaluation seeds: sweep['seeds'], or the config's own seed."""
  return sweep['seeds'] if sweep['seeds'] is not None else [int(config.seed)]


def expand(config, sweep: dict) -> list[Point]:
  """The sweep's points, seeds outermost, in grid order then extras; duplicates dropped. With a
  tuned field: the tuning stage, every setting at every tuned value with the tuning seeds (by
  default the first seed); `expand_seed_stage` gives the rest once the tuning has run."""
  sweep = check_sweep(sweep)
  settings = _settings(config, sweep)
  seeds = _seeds(config, sweep)
  if not sweep['tune']:
    return _make_points(config, sweep, [(s, seed, 'grid') for seed in seeds for s in settings])
  (field, values), = sweep['tune'].items()
  tune_seeds = sweep['tune_seeds'] or seeds[:1]
  return _make_points(config, sweep, [({**s, field: v}, seed, 'tune') for seed in tune_seeds
                                      for s in settings for v in values])


def setting_key(values: dict, tuned: Sequence[str]) -> str:
  """What identifies a point's setting: its swept values without the tuned field."""
  return json.dumps({k: v for k, v in values.items() if k not in tuned}, sort_keys=True,
                    default=repr)


def choose_tuned(sweep_dir: str, tune_points: Sequence[Point], field: str) -> dict[str, dict]:
  """Per setting, {'value': the tuned value with the best validation metric (None when every run
  diverged), 'pending': names of tuning runs not finished}. A setting's value is chosen only
  when all of its tuning runs have finished (averaged over tuning seeds when there are several)."""
  by_setting: dict[str, list] = {}
  for p in tune_points:
    by_setting.setdefault(setting_key(p.values, [field]), []).append(p)
  out = {}
  for key, points in by_setting.items():
    results = {p.name: files.read_results(os.path.join(sweep_dir, p.name)) for p in points}
    pending = [p.name for p in points if (results[p.name] or {}).get('status') not in FINISHED]
    if pending:
      out[key] = {'value': None, 'pending': pending}
      continue
    candidates = [(p.values[field], results[p.name]) for p in points]
    out[key] = {'value': statistics.best_tuned_value(candidates), 'pending': []}
  return out


def tune_stage(config, sweep: dict, sweep_dir: str):
  """The tuning stage as the runs in `sweep_dir` have grown it: (the sweep with its tuned list
  as it stands, the tuning points, each setting's choice (choose_tuned), whether the seeds stage
  may start). `sweep` is as check_sweep returns it.

  Without sweep['extend'] a setting's seeds may start once its own tuning runs have finished.
  With it, no seed starts before every setting's tuning has finished; then, while some setting
  chose the first (last) value of the tuned list, the next value of extend['below'] (['above'])
  joins the list for every setting, and its tuning runs come before any seed. The list is derived
  from the finished runs each time, so a resumed sweep finds the same one."""
  (field, values), = sweep['tune'].items()
  values = list(values)
  extend = sweep['extend'] or {}
  below, above = list(extend.get('below', [])), list(extend.get('above', []))
  while True:
    sweep = {**sweep, 'tune': {field: list(values)}}
    points = expand(config, {**sweep, 'extend': None})  # the values added are checked already
    choices = choose_tuned(sweep_dir, points, field)
    if not extend:
      return sweep, points, choices, True
    if any(c['pending'] for c in choices.values()):
      return sweep, points, choices, False
    chosen = {format_value(c['value']) for c in choices.values() if c['value'] is not None}
    grown = False
    if below and format_value(values[0]) in chosen:
      values.insert(0, below.pop(0))
      grown = True
    if above and format_value(values[-1]) in chosen:
      values.append(above.pop(0))
      grown = True
    if not grown:
      return sweep, points, choices, True


def expand_seed_stage(config, sweep: dict, choices: dict[str, dict]) -> list[Point]:
  """The seeds stage: every setting whose value is chosen, at that value, with every evaluation
  seed (`sweep['seeds']`, seeds outermost). A point that coincides with a tuning run (a tuning
  seed that is also an evaluation seed) is that run; tuning seeds that are not evaluation seeds
  get no point here. `sweep` is as check_sweep returns it."""
  (field, _), = sweep['tune'].items()
  runs = []
  for seed in _seeds(config, sweep):
    for setting in _settings(config, sweep):
      values = {k: get_field(apply_overrides(config, setting), k) for k in swept_fields(sweep)}
      choice = choices.get(setting_key(values, [field]), {}).get('value')
      if choice is not None:
        runs.append(({**setting, field: choice}, seed, 'seeds'))
  return _make_points(config, sweep, runs)


# ----------------------------------------------------------------------------------------------
# Commands


def override_flags(overrides: dict[str, Any], base=None) -> list[str]:
  """`--config.K=V` flags; a None value that the base config also holds is left out (a flag
  cannot say None)."""
  flags = []
  within = None if base is None else files.flatten(base.to_dict())
  for key, value in common.upgrade(overrides, within).items():
    if value is None:
      if base is not None and get_field(base, key) is None:
        continue
      raise SweepError(f'config.{key} cannot be set to None from the command line')
    flags.append(f'--config.{key}={format_value(value)}')
  return flags


def point_command(point: Point, config_spec: str, workdir: str, python: str = 'python',
                  main_py: str = 'main.py', forwarded: Optional[dict] = None,
                  base=None) -> list[str]:
  return [python, main_py, f'--config={config_spec}', f'--workdir={workdir}',
          *override_flags(dict(forwarded or {}), base), *override_flags(point.overrides, base)]


def _display_path(path: str) -> str:
  rel = os.path.relpath(path)
  return path if rel.startswith('..') else rel


# ----------------------------------------------------------------------------------------------
# State of a point's workdir


def point_status(workdir: str) -> Optional[str]:
  """The status in the workdir's results.json (completed, diverged, preempted, ...), or None."""
  results = files.read_results(workdir)
  return None if results is None else results.get('status')


def config_difference(workdir: str, config) -> Optional[str]:
  """How the config saved in `workdir` (read as train/workdir.py reads it, old fields upgraded)
  differs from `config`, the config the sweep would run there now: 'config.F: the run has A, the
  sweep now B' for the first field that differs (fields of NOT_COMPARED aside), a line saying
  why the saved one cannot be read, or None when they are equal or the workdir has no
  config.json (results written by other means than main.py)."""
  from train import validation, workdir as workdir_lib
  if not os.path.exists(os.path.join(workdir, 'config.json')):
    return None  # not a run of main.py (which writes config.json first): nothing to compare
  try:
    saved = workdir_lib.read_config(workdir)
  except (validation.ConfigError, faults.RunFault) as e:
    return f'its config cannot be read: {e}'
  a = files.flatten(json.loads(saved.to_json_best_effort()))
  b = files.flatten(json.loads(config.to_json_best_effort()))
  for key in sorted(set(a) | set(b)):
    if key not in NOT_COMPARED and a.get(key) != b.get(key):
      return f'config.{key}: the run has {a.get(key)!r}, the sweep now {b.get(key)!r}'
  return None


def changed_points(sweep_dir: str, points: Sequence[Point], statuses: dict) -> dict[str, str]:
  """{name: difference} of the finished points whose saved config is not the one the sweep
  would run now (see `config_difference`)."""
  changed = {}
  for p in points:
    if statuses.get(p.name) in FINISHED:
      difference = config_difference(os.path.join(sweep_dir, p.name), p.config)
      if difference:
        changed[p.name] = difference
  return changed


def _set_aside(sweep_dir: str, name: str) -> str:
  """Renames the point's workdir to `<name>.replaced` (`.replaced.2`, ... if taken)."""
  base = target = os.path.join(sweep_dir, f'{name}.replaced')
  number = 1
  while os.path.exists(target):
    number += 1
    target = f'{base}.{number}'
  os.rename(os.path.join(sweep_dir, name), target)
  return target


def summary_line(results: Optional[dict]) -> str:
  """'valid bpc 1.523 | test bpc 1.498' (the metric the report uses), or the divergence message."""
  if not results:
    return ''
  if results.get('status') == 'diverged':
    return results.get('message', '')
  parts = []
  for split in ('valid', 'test'):
    values = results.get(split)
    if isinstance(values, dict):
      metric = statistics.pick_metric(values)
      if metric is not None:
        parts.append(f'{split} {metric.label_short} {metric.format(values[metric.key])}')
  return ' | '.join(parts)


# ----------------------------------------------------------------------------------------------
# Running


def point_environment() -> dict[str, str]:
  """The sweep's environment for a point, with JAX's persistent compilation cache on (in the
  project's cache directory unless JAX_COMPILATION_CACHE_DIR is set): the points of a sweep
  compile the same programs again and again (every seed of a setting, a resumed point)."""
  env = dict(os.environ)
  env.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(cache.directory(), 'jax'))
  return env


PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent ends


def _ending_with(parent: int) -> Callable[[], None]:
  """A Popen preexec_fn: the child is sent SIGTERM when `parent` ends, however it ends (Linux's
  PR_SET_PDEATHSIG, armed in the child before it runs the command); a child whose parent is
  already gone ends at once."""
  prctl = ctypes.CDLL(None).prctl if sys.platform.startswith('linux') else None

  def arm():
    if prctl is not None:
      prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
      os.kill(os.getpid(), signal.SIGTERM)
  return arm


def _share_niceness(pid: int) -> None:
  """Gives the session of point `pid` the sweep's niceness. Linux's autogroup scheduling shares
  the CPU between sessions before it looks at any process's nice value, so a point in a session
  of its own would compete with the user's other work as an equal whatever `nice` the sweep ran
  under; a session's group takes a nice value of its own in /proc/<pid>/autogroup. Elsewhere, or
  where that file cannot be written, nothing changes."""
  nice = os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, 'getpriority') else 0
  if nice <= 0:
    return
  try:
    with open(f'/proc/{pid}/autogroup', 'w') as f:
      f.write(str(nice))
  except OSError:
    pass


def core_sets(cores_per_point: int, parallel: int) -> list[frozenset]:
  """`parallel` disjoint sets of `cores_per_point` CPUs from those this process may run on, in
  order; ValueError, in one line, when there are not that many."""
  cores = sorted(os.sched_getaffinity(0))
  if cores_per_point * parallel > len(cores):
    raise ValueError(f'--parallel={parallel} points of --cores_per_point={cores_per_point} need '
                     f'{cores_per_point * parallel} CPUs, and this sweep may use {len(cores)} '
                     f'({",".join(map(str, cores))}); lower one of them')
  return [frozenset(cores[i * cores_per_point:(i + 1) * cores_per_point])
          for i in range(parallel)]


class Runner:
  """Runs point commands as subprocesses, each in a session of its own at the sweep's niceness;
  on stop() sends them SIGTERM (they checkpoint). The points end with the sweep: if it is killed,
  they get SIGTERM and checkpoint. With `cores` (core_sets), each point runs on a set of its own,
  which no other running point has (as `taskset` would pin it)."""

  def __init__(self, cores: Sequence[frozenset] = ()):
    self.lock = threading.Lock()
    self.procs: set[subprocess.Popen] = set()
    self.stopping = False
    self.free_cores = list(cores)

  def __call__(self, argv: list[str], workdir: str) -> int:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'log.txt'), 'a') as log:
      log.write(f'\n$ {shlex.join(argv)}\n')
      log.flush()
      with self.lock:
        if self.stopping:
          return -1
        cores = self.free_cores.pop(0) if self.free_cores else None
        arm = _ending_with(os.getpid())

        def prepare_child():
          arm()
          if cores is not None:
            os.sched_setaffinity(0, cores)
        # Own session: a Ctrl-C at the terminal reaches the sweep only, which passes on SIGTERM.
        # preexec_fn: the point gets SIGTERM (and checkpoints) when the sweep dies, even by kill -9.
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env=point_environment(), preexec_fn=prepare_child)
        _share_niceness(proc.pid)
        self.procs.add(proc)
      try:
        return proc.wait()
      finally:
        with self.lock:
          self.procs.discard(proc)
          if cores is not None:
            self.free_cores.append(cores)

  def stop(self, sig=signal.SIGTERM) -> None:
    with self.lock:
      self.stopping = True
      for proc in self.procs:
        try:
          proc.send_signal(sig)
        except ProcessLookupError:
          pass


def run_points(sweep_dir: str, points: Sequence[Point], commands: dict[str, list[str]],
               parallel: int = 1, runner: Optional[Callable[[list[str], str], int]] = None,
               log: Callable[[str], None] = print, cores_per_point: int = 0) -> dict[str, str]:
  """Runs the points that are not finished, `parallel` at a time, each on `cores_per_point` CPUs
  of its own when that is not 0; returns {name: status}.

  `runner(argv, workdir)` runs one command and returns its exit code (tests pass a fake)."""
  runner = runner or Runner(core_sets(cores_per_point, parallel) if cores_per_point else ())
  statuses = {p.name: point_status(os.path.join(sweep_dir, p.name)) for p in points}
  todo = [p for p in points if statuses[p.name] not in FINISHED]
  done = len(points) - len(todo)
  log(f'{len(points)} points in {sweep_dir}: {done} finished, {len(todo)} to run'
      + (f', {parallel} at a time' if parallel > 1 and todo else ''))
  width = len(str(len(todo)))
  stopped = threading.Event()

  def run_one(index_point):
    index, point = index_point
    if stopped.is_set():
      return point.name, statuses[point.name] or 'not started'
    tag = f'[{index + 1:>{width}}/{len(todo)}]'
    workdir = os.path.join(sweep_dir, point.name)
    holder = lock.holder(workdir)
    if holder is not None:
      log(f'{tag} in use {point.name}: not started, its workdir is in use by {holder} (rerun '
          'the sweep once that has ended)')
      return point.name, IN_USE
    resumed = os.path.isdir(os.path.join(workdir, 'checkpoints'))
    log(f'{tag} start {point.name}' + (' (resuming)' if resumed else ''))
    start = time.time()
    try:
      rc = runner(commands[point.name], workdir)
    except Exception as e:  # a runner that fails must not stop the other points
      rc, error = -1, e
    else:
      error = None
    results = files.read_results(workdir)
    status = (results or {}).get('status')
    # main.py exits 0 when it completes or is preempted and 1 when the run diverges; any other
    # outcome (a crash, a config error, results.json left from an earlier attempt) is a failure.
    if status not in ('completed', 'diverged', 'preempted') or (rc != 0) != (status == 'diverged'):
      status = 'failed'
    detail = summary_line(results) if status != 'failed' else (
        f'exit code {rc}' + (f' ({error})' if error else '')
        + f'; see {os.path.join(workdir, "log.txt")}')
    log(f'{tag} {status} {point.name}' + (f' | {detail}' if detail else '')
        + f' | {time.time() - start:.0f} s')
    return point.name, status

  if todo:
    pool = futures.ThreadPoolExecutor(max_workers=max(1, parallel))
    previous = {}
    if isinstance(runner, Runner) and threading.current_thread() is threading.main_thread():
      def handle(signum, frame):
        if stopped.is_set():  # a second signal: stop now
          runner.stop(signal.SIGKILL)
          return
        log(f'signal {signum}: stopping; running points save a checkpoint and exit '
            '(rerun the same command to continue)')
        stopped.set()
        runner.stop(signal.SIGTERM)
      for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handle)
    try:
      for name, status in pool.map(run_one, enumerate(todo)):
        statuses[name] = status
    finally:
      pool.shutdown(wait=True)
      for sig, handler in previous.items():
        signal.signal(sig, handler)
  counts = {}
  for status in statuses.values():
    counts[status or 'not started'] = counts.get(status or 'not started', 0) + 1
  log('sweep: ' + ', '.join(f'{n} {s}' for s, n in sorted(counts.items())))
  return statuses


# ----------------------------------------------------------------------------------------------
# Files: sweep.json, SLURM


def sweep_description(config_spec: str, sweep: dict, points: Sequence[Point], base,
                      forwarded: dict, commands: dict[str, list[str]]) -> dict:
  """What sweep.json holds; `sweep` is as prepare returns it."""
  keys = swept_fields(sweep)
  return {
      'config': config_spec,
      'forwarded_overrides': {k: format_value(v) for k, v in forwarded.items()},
      'axes': sweep['axes'],
      'seeds': sweep['seeds'] if sweep['seeds'] is not None else [int(base.seed)],
      'extra': sweep['extra'],
      'tune': sweep['tune'],
      'tune_seeds': sweep['tune_seeds'],
      'extend': sweep['extend'],
      'compare': sweep['compare'],
      'choices': sweep.get('choices', {}),
      'fields': keys,
      'base': {k: get_field(base, k) for k in keys},
      'num_points': len(points),
      'points': [{'name': p.name, 'seed': p.seed, 'overrides': p.overrides, 'values': p.values,
                  'stage': p.stage, 'command': shlex.join(commands[p.name])} for p in points],
  }


def _workdir_of(argv: Sequence[str]) -> str:
  """The --workdir=DIR of a point's command."""
  for arg in argv:
    if arg.startswith('--workdir='):
      return arg[len('--workdir='):]
  raise SweepError(f'no --workdir= in {shlex.join(argv)}')


def slurm_script(commands: dict[str, list[str]], job_name: str, log_dir: str, throttle: int = 0,
                 sbatch: Sequence[str] = (), python: str = sys.executable) -> str:
  """A SLURM array script with one task per point, addressed by name.

  Args:
    commands: {point name: its command}, in the order of the array's tasks.
    job_name: the job's name.
    log_dir: where each task's log, slurm-<array job>_<task>.out, goes (appended to on requeue).
    throttle: the most tasks running at once (0: no limit).
    sbatch: extra `#SBATCH` options, e.g. '--time=02:00:00'.
    python: the interpreter that reads a point's results.json.
  Returns:
    The script. It holds every point's name and command: SLURM keeps the copy it was given, so
    writing the script again never changes what a submitted task runs. A task whose point has
    finished (results.json `completed` or `diverged`) runs nothing; one whose run stopped early
    (the time limit's SIGTERM, `scancel --signal=TERM`) requeues itself (scripts/slurm/requeue.sh).
  """
  root = os.path.dirname(MAIN)
  array = f'0-{len(commands) - 1}' + (f'%{throttle}' if throttle else '')
  cache_dir = point_environment()['JAX_COMPILATION_CACHE_DIR']
  lines = [
      '#!/bin/bash',
      '# One array task per sweep point: task i runs the point named names[i] below, with the',
      '# command this file gives that name. Submit with: sbatch THIS_FILE. A task whose run',
      '# stops early (time limit, scancel --signal=TERM) requeues itself and resumes from its',
      '# checkpoint; a finished point runs nothing. Rerun train.sweep --slurm for a script of the',
      '# unfinished points; tasks already submitted keep the script they were submitted with.',
      f'#SBATCH --job-name={job_name}',
      f'#SBATCH --array={array}',
      f'#SBATCH --output={os.path.join(log_dir, "slurm-%A_%a.out")}',
      '#SBATCH --open-mode=append',
      '#SBATCH --signal=TERM@120',
      '#SBATCH --requeue',
      *[f'#SBATCH {opt}' for opt in sbatch],
      'set -euo pipefail',
      f'cd {shlex.quote(root)}',
      f'export JAX_COMPILATION_CACHE_DIR="${{JAX_COMPILATION_CACHE_DIR:-{cache_dir}}}"',
      f'python={shlex.quote(python)}',
      'names=(',
      *[f'  {shlex.quote(name)}' for name in commands],
      ')',
      'name="${names[$SLURM_ARRAY_TASK_ID]}"',
      'case "$name" in',
  ]
  for name, argv in commands.items():
    lines += [f'  {shlex.quote(name)})',
              f'    workdir={shlex.quote(_workdir_of(argv))}',
              f'    command=({shlex.join(argv)}) ;;']
  lines += [
      '  *) echo "error: no point for task $SLURM_ARRAY_TASK_ID in this script" >&2; exit 2 ;;',
      'esac',
      f'. {shlex.quote(os.path.join(root, "scripts", "slurm", "requeue.sh"))}',
      'status="$(run_status "$python" "$workdir")"',
      'if [ "$status" = completed ] || [ "$status" = diverged ]; then',
      '  echo "task $SLURM_ARRAY_TASK_ID: point $name has finished ($status); nothing to run"',
      '  exit 0',
      'fi',
      'echo "task $SLURM_ARRAY_TASK_ID (restart ${SLURM_RESTART_COUNT:-0}): point $name"',
      'run_and_requeue "$python" "$workdir" "${command[@]}"',
      '',
  ]
  return '\n'.join(lines)


def write_slurm(path: str, commands: dict[str, list[str]], job_name: str, log_dir: str,
                throttle: int = 0, sbatch: Sequence[str] = ()) -> None:
  """Writes `slurm_script(...)` to `path` (atomically), executable.

  Args:
    path: the script's path.
    commands, job_name, log_dir, throttle, sbatch: as `slurm_script` takes them.
  """
  text = slurm_script(commands, job_name, os.path.abspath(log_dir), throttle, sbatch)
  files.atomic_write(path, lambda f: f.write(text.encode('utf-8')))
  os.chmod(path, 0o755)


# ----------------------------------------------------------------------------------------------
# Loading a sweep config file


def load_grid(config_spec: str) -> dict:
  """`get_sweep(arg)` of the config file named as in `--config=path.py:arg`."""
  path, *arg = config_spec.split(':', 1)
  spec = importlib.util.spec_from_file_location('sweep_config', path)
  if spec is None or spec.loader is None:
    raise SweepError(f'cannot load config file {path}')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_sweep'):
    raise SweepError(f'{path} has no get_sweep(arg): a sweep config names its grid there '
                     '(see train/sweep.py)')
  return module.get_sweep(*arg)


def prepare(config, config_spec: str, sweep_dir: str, forwarded: dict, python: str,
            main_py: str, absolute: bool = False):
  """(sweep, points, commands) for a loaded config; checks every point's config. With a tuned
  field the points are the tuning stage (its list grown as tune_stage says) and the seeds stage of
  every setting whose choice is final; sweep['choices'] holds each setting's choice."""
  from train import validation
  sweep = check_sweep(load_grid(config_spec))
  keys = swept_fields(sweep)
  for key in forwarded:
    if key in keys or key == 'seed':
      raise SweepError(f'--config.{key} is swept by the sweep config and cannot be set for all '
                       'points')
  points = expand(config, sweep)
  if sweep['tune']:
    sweep, points, choices, ready = tune_stage(config, sweep, sweep_dir)
    sweep['choices'] = choices
    names = {p.name for p in points}
    if ready:
      points += [p for p in expand_seed_stage(config, sweep, choices) if p.name not in names]
  for point in points:
    try:
      validation.check_config(point.config)
    except validation.ConfigError as e:
      raise SweepError(f'point {point.name}: {e}') from None
  spec = config_spec
  if absolute:
    path, sep, arg = config_spec.partition(':')
    spec = os.path.abspath(path) + sep + arg
  commands = {p.name: point_command(
      p, spec, os.path.abspath(os.path.join(sweep_dir, p.name)) if absolute
      else os.path.join(sweep_dir, p.name), python, main_py, forwarded, config) for p in points}
  return sweep, points, commands


# ----------------------------------------------------------------------------------------------


def _dry_run(sweep_dir: str, points, commands, statuses, todo) -> int:
  """Prints what the sweep would run, and writes nothing."""
  print(f'{len(points)} points in {sweep_dir}: {len(points) - len(todo)} finished, '
        f'{len(todo)} to run (dry run: nothing written)')
  changed = changed_points(sweep_dir, points, statuses)
  for p in points:
    state = statuses[p.name]
    print(f'{"skip" if state in FINISHED else "run "} {p.name}'
          + (f' [{state}]' if state else '')
          + (f' [changed: {changed[p.name]}]' if p.name in changed else ''))
    if state not in FINISHED:
      print('     ' + shlex.join(commands[p.name]))
  return 0


def _settle_changed(mode: str, sweep_dir: str, points, statuses, log) -> bool:
  """Applies --changed_points to the finished points whose config differs from the sweep's now;
  returns whether any was set aside (the sweep must be prepared again)."""
  changed = changed_points(sweep_dir, points, statuses)
  if not changed:
    return False
  name, difference = next(iter(changed.items()))
  more = f' (and {len(changed) - 1} more points)' if len(changed) > 1 else ''
  if mode == 'stop':
    raise SystemExit(
        f'error: point {name} finished with another config than the sweep\'s now '
        f'({difference}){more}; pass --changed_points=rerun to train such points again (their '
        'workdirs are kept as <name>.replaced), or --changed_points=accept to count them '
        'finished as they are')
  if mode == 'accept':
    log(f'point {name} finished with another config ({difference}){more}: counted finished '
        '(--changed_points=accept)')
    return False
  for name in changed:
    if lock.holder(os.path.join(sweep_dir, name)) is None:
      aside = _set_aside(sweep_dir, name)
      log(f'point {name} finished with another config ({changed[name]}): moved to {aside} '
          'and run again (--changed_points=rerun)')
  return True


def main(argv):
  from absl import flags, logging
  from ml_collections import config_flags
  FLAGS = flags.FLAGS
  if len(argv) > 1:
    raise SystemExit(f'error: unexpected arguments {argv[1:]}')
  modes = [m for m in ('print_commands', 'slurm', 'dry_run') if getattr(FLAGS, m)]
  if len(modes) > 1:
    raise SystemExit(f'error: --{" and --".join(modes)} cannot be combined')
  if FLAGS.parallel < 1:
    raise SystemExit('error: --parallel must be at least 1')
  if FLAGS.cores_per_point < 0:
    raise SystemExit('error: --cores_per_point must be 0 (no pinning) or more')
  if FLAGS.cores_per_point and not (FLAGS.slurm or FLAGS.print_commands or FLAGS.dry_run):
    try:
      core_sets(FLAGS.cores_per_point, FLAGS.parallel)
    except ValueError as e:
      raise SystemExit(f'error: {e}') from None
  config_spec = config_flags.get_config_filename(FLAGS['config'])
  forwarded = dict(config_flags.get_override_values(FLAGS['config']))
  sweep_dir = FLAGS.sweep_dir
  slurm = bool(FLAGS.slurm)

  def prepared():
    """(sweep, points, commands, statuses, the points to run) as `sweep_dir` is now."""
    try:
      sweep, points, commands = prepare(
          FLAGS.config, config_spec, sweep_dir, forwarded,
          python=sys.executable if slurm else 'python',
          main_py=MAIN if slurm else _display_path(MAIN), absolute=slurm)
    except SweepError as e:
      raise SystemExit(f'error: {e}')
    statuses = {p.name: point_status(os.path.join(sweep_dir, p.name)) for p in points}
    return sweep, points, commands, statuses, [p for p in points
                                               if statuses[p.name] not in FINISHED]

  sweep, points, commands, statuses, todo = prepared()
  log = lambda line: logging.info('%s', line)

  if FLAGS.dry_run:
    return _dry_run(sweep_dir, points, commands, statuses, todo)

  os.makedirs(sweep_dir, exist_ok=True)
  try:
    lock.take(sweep_dir, 'sweep')  # held until the sweep ends; before anything is written here
  except faults.RunFault as e:
    raise SystemExit(f'error: {e}')
  if _settle_changed(FLAGS.changed_points, sweep_dir, points, statuses, log):
    sweep, points, commands, statuses, todo = prepared()
  files.write_json(os.path.join(sweep_dir, 'sweep.json'),
                   sweep_description(config_spec, sweep, points, FLAGS.config, forwarded, commands),
                   default=repr)
  if FLAGS.print_commands:
    if len(todo) < len(points):
      print(f'# {len(points) - len(todo)} of {len(points)} points finished: not listed',
            file=sys.stderr)
    for p in todo:
      print(shlex.join(commands[p.name]))
    return 0
  if slurm:
    if not todo:
      print(f'all {len(points)} points are finished: no SLURM script written', file=sys.stderr)
      return 0
    name = os.path.basename(os.path.normpath(sweep_dir)) or 'sweep'
    write_slurm(FLAGS.slurm, {p.name: commands[p.name] for p in todo}, name, sweep_dir,
                FLAGS.parallel if FLAGS['parallel'].present else 0, FLAGS.sbatch)
    print(f'wrote {FLAGS.slurm} ({len(todo)} array tasks; {len(points) - len(todo)} finished '
          f'points left out); submit with: sbatch {FLAGS.slurm}')
    return 0

  return _run_stages(FLAGS, config_spec, forwarded, sweep, points, commands)


def _run_stages(FLAGS, config_spec: str, forwarded: dict, sweep: dict, points, commands) -> int:
  """Runs the unfinished points; with a tuned field, then the seed points its choices make
  runnable, until nothing new can run. Returns the exit status."""
  from absl import logging
  log = lambda line: logging.info('%s', line)
  sweep_dir = FLAGS.sweep_dir
  attempted: set[str] = set()
  statuses: dict[str, Optional[str]] = {}
  while True:  # with a tuned field, finishing the tuning stage makes seed points runnable
    new = [p for p in points if p.name not in attempted]
    if not new:
      break
    attempted.update(p.name for p in new)
    env_cmds = {name: [sys.executable, MAIN] + cmd[2:] for name, cmd in commands.items()}
    round_statuses = run_points(sweep_dir, new, env_cmds, FLAGS.parallel, log=log,
                                cores_per_point=FLAGS.cores_per_point)
    statuses.update(round_statuses)
    stopped = any(s in ('preempted', 'not started') for s in round_statuses.values())
    if not sweep['tune'] or stopped:
      break
    sweep, points, commands = prepare(FLAGS.config, config_spec, sweep_dir, forwarded,
                                      python='python', main_py=_display_path(MAIN))
    files.write_json(os.path.join(sweep_dir, 'sweep.json'),
                     sweep_description(config_spec, sweep, points, FLAGS.config, forwarded,
                                       commands), default=repr)
  log(f'report: python -m train.report --sweep_dir={sweep_dir}')
  pending = [k for k, c in sweep.get('choices', {}).items() if c['pending']]
  return 0 if all(s in FINISHED for s in statuses.values()) and not pending else 1


def _define_flags():
  from absl import flags
  from ml_collections import config_flags
  flags.DEFINE_string('sweep_dir', None, 'Directory holding one workdir per point and sweep.json.')
  flags.DEFINE_integer('parallel', 1, 'Points run at once (processes); with --slurm, the most '
                       'array tasks running at once when given.')
  flags.DEFINE_integer('cores_per_point', 0, 'Pin each running point to this many CPUs of its '
                       'own (0: no pinning, every point may use every CPU); with --parallel=2 '
                       'and 1 on two cores, one point per core.')
  flags.DEFINE_bool('print_commands', False, 'Print the command of each unfinished point, one '
                    'per line, and run nothing.')
  flags.DEFINE_string('slurm', None, 'Write a SLURM array script here for the unfinished points '
                      '(one task per point, addressed by name), and run nothing.')
  flags.DEFINE_multi_string('sbatch', [], 'Extra #SBATCH options for --slurm, e.g. '
                            '--sbatch=--time=02:00:00 --sbatch=--cpus-per-task=2.')
  flags.DEFINE_enum('changed_points', 'stop', CHANGED_POINTS, 'A finished point whose saved '
                    'config differs from the one the sweep would run: stop the sweep with one line '
                    'naming the field (stop), move its workdir aside and train it again (rerun), '
                    'or count it finished as it is (accept).')
  flags.DEFINE_bool('dry_run', False, 'List the points, what would run and the commands; write '
                    'nothing.')
  config_flags.DEFINE_config_file('config', None, 'Sweep config file (get_config and get_sweep).',
                                  lock_config=True)
  flags.mark_flags_as_required(['config', 'sweep_dir'])


if __name__ == '__main__':
  from absl import app
  from train import cli
  _define_flags()
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=cli.parse_flags)
