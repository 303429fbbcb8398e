"""Report of a sweep: tables over seeds and plots, from the finished workdirs.

  python -m train.report --sweep_dir=runs/ablation_ptb [--out=results/ablation_ptb]

Reads `sweep.json` (written by train.sweep) and each point's `results.json`, `metrics.jsonl` and
`config.json`; without sweep.json every subdirectory with a config.json is a point and the swept
fields are those whose values differ between them (each config.json read as today's config, so
runs of several versions compare by today's fields). Writes to `--out` (default: the sweep dir):

- `report.md`: one row per setting (the points that differ only in seed): the final validation
  and test metric (bits per character for character-level language models, perplexity for
  word-level ones, accuracy for classifiers, label error rate for CTC), mean, standard deviation
  (n - 1) and 95% confidence interval over seeds (Student t, mean +- t(0.975, n - 1) s / sqrt(n)),
  the number of seeds with a result and the number of diverged runs (status `diverged`, or a
  non-finite final metric; they are left out of the statistics), and the parameter count (from
  the runs' results.json, or computed from a run's config.json); then one row per run. With a
  'compare' entry: paired differences with the t interval, the Wilcoxon signed-rank p and a
  bootstrap interval of the median difference, and the Holm and Benjamini-Hochberg adjustments
  over every comparison of the report.
- `curves.png`: the validation metric over training steps, mean over seeds, per setting.
- `depth.png` (when `model.num_layers` is swept): final metric against depth with 95% CI error
  bars, one line per setting of the other fields (e.g. the between-layer op); otherwise
  `settings.png` with one error bar per setting. A value far outside the others (beyond 3
  interquartile ranges of the runs' values) is not allowed to set the axis: the axis is cut to
  the rest, and a triangle at the edge marks each mean cut off, with its value and how many runs
  lie beyond.

Several reports' comparisons corrected as one family (stated in the file it writes):

  python -m train.report --family=results/a/runs,results/b/runs --out=results/family
"""
from __future__ import annotations

import dataclasses
import datetime
import fractions
import json
import math
import os
from typing import Any, Optional, Sequence

import numpy as np

from configs import common
from train import files, metrics as metrics_lib, sweep as sweep_lib
from train.statistics import (ADJUSTMENTS, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, METRICS, Metric,
                              Stats, best_tuned_value, paired_difference, pick_metric, stats,
                              t_quantile, unanimous_sign_test_p, wilcoxon_p)

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


def _short(fields: Sequence[str]) -> dict[str, str]:
  last = [k.split('.')[-1] for k in fields]
  return {k: (s if last.count(s) == 1 else k) for k, s in zip(fields, last)}


def _fmt_value(v) -> str:
  """A value as the report shows it: as written, but a float that is a small fraction exactly
  (4/3 rather than 1.3333333333333333), which names no other value."""
  if isinstance(v, float) and len(repr(v)) > 8:
    fraction = fractions.Fraction(v).limit_denominator(12)
    if fraction.denominator > 1 and float(fraction) == v:
      return f'{fraction.numerator}/{fraction.denominator}'
  return v if isinstance(v, str) else repr(v)


def setting_label(description: dict, values: dict, exclude: Sequence[str] = ()) -> str:
  """'between=relu' or 'between=none, residual=True': axis fields always, fields set only by
  extra points when they differ from the base config. A setting equal to the base config is
  named by the fields the extra points set to more than one value, this one among them (extras
  {between: none}, {between: relu} label the first 'between=none'), else 'base'."""
  exclude = [*exclude, *(description.get('tune') or {})]  # a tuned value is shown on its own
  fields = [k for k in description['fields'] if k not in exclude]
  short = _short(description['fields'])
  axes, base = description.get('axes', {}), description.get('base', {})
  extra_values: dict[str, set] = {}
  for extra in description.get('extra') or []:
    for k, v in extra.items():
      extra_values.setdefault(k, set()).add(json.dumps(v, default=repr))

  def named_by_extras(k):
    set_by_extras = extra_values.get(k, set())
    return len(set_by_extras) > 1 and json.dumps(values.get(k), default=repr) in set_by_extras

  parts = [f'{short[k]}={_fmt_value(values.get(k))}' for k in fields
           if k in axes or k not in base or values.get(k) != base.get(k)]
  parts = parts or [f'{short[k]}={_fmt_value(values.get(k))}' for k in fields if named_by_extras(k)]
  return ', '.join(parts) or 'base'


# ----------------------------------------------------------------------------------------------
# Plots


def _colors(labels: Sequence[str]) -> dict[str, Any]:
  import matplotlib
  cmap = matplotlib.colormaps['tab10' if len(labels) <= 10 else 'tab20']
  return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def _styles(labels: Sequence[str]) -> dict[str, str]:
  """Solid and dashed lines in turn, so that lines that coincide stay visible."""
  return {label: ('-', '--')[i % 2] for i, label in enumerate(labels)}


def _mean_curve(runs: Sequence[Run], metric: Metric) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Steps every run has, with the mean and the min/max of the metric over runs."""
  curves = [{step: metric.value(rec) for step, rec in r.curve} for r in runs if r.curve]
  if not curves:
    return np.array([]), np.array([]), np.zeros((2, 0))
  steps = sorted(set.intersection(*(set(c) for c in curves)))
  values = np.array([[c[s] for s in steps] for c in curves])
  return np.array(steps), values.mean(0), np.stack([values.min(0), values.max(0)])


def plot_curves(path: str, description: dict, settings: Sequence[Setting], metric: Metric,
                title: str) -> Optional[str]:
  """Validation metric over steps: one panel per depth when the depth is swept."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  by_depth = DEPTH in description['fields']
  exclude = [DEPTH] if by_depth else []
  panels = sorted({s.values.get(DEPTH) for s in settings}) if by_depth else [None]
  if not settings:  # e.g. a sweep still in its tuning stage
    return None
  labels = list(dict.fromkeys(setting_label(description, s.values, exclude) for s in settings))
  colors, styles = _colors(labels), _styles(labels)
  fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 1.2, 4.2), squeeze=False,
                           sharey=True)
  drawn = {}
  for ax, depth in zip(axes[0], panels):
    for s in settings:
      if by_depth and s.values.get(DEPTH) != depth:
        continue
      runs = [r for r in s.runs if r.status == 'completed' and not r.diverged]
      steps, mean, spread = _mean_curve(runs, metric)
      if not len(steps):
        continue
      label = setting_label(description, s.values, exclude)
      line, = ax.plot(steps, mean, color=colors[label], ls=styles[label], marker='.', lw=1.6,
                      label=label)
      if len(runs) > 1:
        ax.fill_between(steps, spread[0], spread[1], color=colors[label], alpha=0.15, lw=0)
      drawn.setdefault(label, line)
    ax.set_title((f'{depth} layer' + ('s' if depth != 1 else '')) if by_depth else '',
                 fontsize=11)
    ax.set_xlabel('training step')
    ax.grid(alpha=0.3)
  if not drawn:
    plt.close(fig)
    return None
  axes[0][0].set_ylabel(f'validation {metric.label}')
  fig.legend(list(drawn.values()), list(drawn.keys()), loc='center left',
             bbox_to_anchor=(1.0, 0.5), frameon=False, title='mean over seeds\n(band: min-max)')
  fig.suptitle(f'{title}: validation {metric.label_short} during training', fontsize=12)
  fig.tight_layout()
  fig.savefig(path, dpi=110, bbox_inches='tight')
  plt.close(fig)
  return path


def _error_bar(stat: Stats) -> float:
  return stat.half_width if stat.n >= 2 else 0.0


def _cut_to_bounds(set_limits, limits, metric: Metric) -> None:
  """Keeps an axis within the metric's possible values (a t interval over 3 seeds can reach
  beyond 100% accuracy), with a small margin so that markers on a bound stay visible."""
  low, high = limits
  margin = 0.02 * (high - low)
  lo_bound, hi_bound = metric.bounds
  set_limits(low if lo_bound is None else max(low, lo_bound - margin),
             high if hi_bound is None else min(high, hi_bound + margin))


FENCE = 3.0  # interquartile ranges beyond the quartiles from which a value no longer sets an axis


def robust_limits(values: Sequence[float], keep: Sequence[float] = ()) -> Optional[tuple]:
  """(low, high) for an axis that shows `values` (the runs' results) without letting a far
  outlier squash the rest: the range of the values within FENCE interquartile ranges of the
  quartiles, and of the points in `keep` (means, interval ends) within the same fence, padded
  by 8%. None when no value lies beyond the fence (the axis is then left as it is)."""
  x = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
  if len(x) < 4:
    return None
  q1, q3 = np.percentile(x, [25, 75])
  iqr = q3 - q1
  low, high = q1 - FENCE * iqr, q3 + FENCE * iqr
  inside = [v for v in [*x, *keep] if math.isfinite(v) and low <= v <= high]
  if iqr <= 0 or len(x[(x >= low) & (x <= high)]) == len(x):
    return None
  a, b = min(inside), max(inside)
  pad = 0.08 * (b - a) if b > a else 0.05 * max(abs(b), 1.0)
  return a - pad, b + pad


def _cut_axis(ax, axis: str, values: Sequence[float], keep: Sequence[float],
              metric: Metric) -> Optional[tuple]:
  """Cuts `ax`'s `axis` ('x' or 'y') to robust_limits(values, keep) where an outlier would set
  it, then to the metric's bounds; returns the cut limits, or None when the axis was not cut."""
  get, set_ = (ax.get_ylim, ax.set_ylim) if axis == 'y' else (ax.get_xlim, ax.set_xlim)
  limits = robust_limits(values, keep)
  if limits:
    set_(*limits)
  _cut_to_bounds(set_, get(), metric)
  return get() if limits else None


def _mark_beyond(ax, axis: str, position: float, value: float, limits: tuple, color,
                 text: str) -> bool:
  """Where `value` lies beyond the cut axis: a triangle at the edge, pointing to it, and `text`
  beside it. Returns whether it was beyond."""
  low, high = limits
  if low <= value <= high:
    return False
  up = value > high
  edge = high if up else low
  marker = {'y': ('^', 'v'), 'x': ('>', '<')}[axis][0 if up else 1]
  xy = (position, edge) if axis == 'y' else (edge, position)
  ax.plot([xy[0]], [xy[1]], marker=marker, ms=8, color=color, ls='none', clip_on=False)
  offset = (5, -11 if up else 4) if axis == 'y' else (-5 if up else 5, 5)
  ax.annotate(text, xy, textcoords='offset points', xytext=offset, color=color, fontsize=7,
              ha='right' if axis == 'x' and up else 'left', annotation_clip=False)
  return True


CUT_NOTE = 'axis cut: a triangle marks a value beyond it'


def plot_depth(path: str, description: dict, settings: Sequence[Setting], metric: Metric,
               title: str) -> Optional[str]:
  """Final valid and test metric against depth, 95% CI error bars, one line per other setting."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  depths = sorted({s.values.get(DEPTH) for s in settings})
  position = {d: i for i, d in enumerate(depths)}
  labels = list(dict.fromkeys(setting_label(description, s.values, [DEPTH]) for s in settings))
  colors, styles = _colors(labels), _styles(labels)
  fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.4))
  width = 0.28
  drawn = False
  for ax, split in zip(axes, ('valid', 'test')):
    shown = []  # (x, stats, runs' values, color) of every point drawn, for the cut axis
    for i, label in enumerate(labels):
      offset = (i - (len(labels) - 1) / 2) * width / max(len(labels) - 1, 1)
      xs, ys, errs, marks = [], [], [], []
      for s in settings:
        if setting_label(description, s.values, [DEPTH]) != label:
          continue
        stat = stats(s.finals(metric, split))
        x = position[s.values.get(DEPTH)] + offset
        if stat.n:
          xs.append(x), ys.append(stat.mean), errs.append(_error_bar(stat))
          shown.append((x, stat, s.finals(metric, split), colors[label]))
        if s.num_diverged:
          marks.append((x, s.num_diverged, len(s.runs), stat.mean if stat.n else None))
      order = np.argsort(xs)
      if xs:
        ax.errorbar(np.array(xs)[order], np.array(ys)[order], yerr=np.array(errs)[order],
                    color=colors[label], ls=styles[label], marker='o', ms=5, capsize=3, lw=1.5,
                    label=label)
        drawn = True
      for x, k, n, y in marks:
        if y is None:  # no seed finished: mark the top of the panel
          ax.plot([x], [0.96], marker='x', ms=7, color=colors[label], ls='none',
                  transform=ax.get_xaxis_transform(), label=None if xs else label)
          ax.annotate(f'{k}/{n} diverged', (x, 0.96), xycoords=('data', 'axes fraction'),
                      textcoords='offset points', xytext=(5, -3), color=colors[label],
                      fontsize=8)
          drawn = True
        else:
          ax.annotate(f'{k}/{n} div.', (x, y), textcoords='offset points', xytext=(4, 6),
                      color=colors[label], fontsize=8)
    ax.set_xticks(range(len(depths)), [str(d) for d in depths])
    ax.set_xlim(-0.5, len(depths) - 0.5)
    cut = _cut_points(ax, 'y', shown, metric)
    ax.set_xlabel('LSTM layers')
    ax.set_ylabel(f'final {"validation" if split == "valid" else "test"} {metric.label}')
    ax.set_title(('validation' if split == 'valid' else 'test')
                 + (f' ({CUT_NOTE})' if cut else ''), fontsize=11 if not cut else 9)
    ax.grid(alpha=0.3)
  if not drawn:
    plt.close(fig)
    return None
  handles, names = axes[0].get_legend_handles_labels()
  fig.legend(handles, names, loc='center left', bbox_to_anchor=(1.0, 0.5), frameon=False,
             title='mean, 95% CI over seeds')
  return _save(fig, path, f'{title}: final {metric.label_short} by depth', metric)


def _cut_points(ax, axis: str, shown: Sequence[tuple], metric: Metric) -> bool:
  """Cuts the axis of a plot of means with 95% intervals, `shown` as (position, stats, the runs'
  values, color), where a run far outside the rest would set it; marks each mean beyond the cut
  (its value and the runs beyond) and each mean inside it with runs beyond. Returns whether the
  axis was cut."""
  values = [v for _, _, finals, _ in shown for v in finals]
  keep = [v for _, st, _, _ in shown for v in (st.mean, st.ci_low, st.ci_high)]
  limits = _cut_axis(ax, axis, values, keep, metric)
  if not limits:
    return False
  d = metric.digits
  for position, st, finals, color in shown:
    beyond = sum(not limits[0] <= v <= limits[1] for v in finals)
    text = f'{beyond}/{len(finals)} run{"s" if len(finals) > 1 else ""} beyond'
    if not _mark_beyond(ax, axis, position, st.mean, limits, color,
                        f'mean {st.mean:.{d}f}; {text}') and beyond:
      xy = (position, st.mean) if axis == 'y' else (st.mean, position)
      ax.annotate(text, xy, textcoords='offset points', xytext=(4, -10), color=color, fontsize=7)
  return True


def _save(fig, path: str, title: str, metric: Metric) -> str:
  import matplotlib.pyplot as plt
  fig.suptitle(f'{title} ({"higher" if metric.higher_is_better else "lower"} is better)',
               fontsize=12)
  fig.tight_layout()
  fig.savefig(path, dpi=110, bbox_inches='tight')
  plt.close(fig)
  return path


def plot_tuning(path: str, description: dict, records: Sequence[dict], metric: Metric,
                title: str) -> Optional[str]:
  """Final validation metric against the tuned value, one line per setting through the mean over
  the tuning seeds (a value where a tuning run diverged or has not finished: no point, as the
  tuning table), each seed's run a small dot; one panel per depth where depth varies."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  field = list(description['tune'])[0]
  by_depth = DEPTH in description['fields']
  labels = [setting_label(description, rec['values'], [field, DEPTH] if by_depth else [field])
            for rec in records]
  colors, styles = _colors(list(dict.fromkeys(labels))), _styles(list(dict.fromkeys(labels)))
  panels = list(dict.fromkeys(rec['values'].get(DEPTH) for rec in records)) if by_depth else [None]
  fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), squeeze=False,
                           sharey=True)
  drawn, shown = False, []
  for ax, depth in zip(axes[0], panels):
    for label, rec in zip(labels, records):
      if by_depth and rec['values'].get(DEPTH) != depth:
        continue
      means = []
      for v in description['tune'][field]:
        if scores := tuning_scores(rec, field, v, metric):
          means.append((v, float(np.mean(scores))))
          ax.plot([v] * len(scores), scores, '.', color=colors[label], ms=3, alpha=0.5)
      if means:
        xs, ys = zip(*means)
        ax.plot(xs, ys, marker='o', color=colors[label], ls=styles[label],
                label=label if label not in shown else None)
        shown.append(label)
        drawn = True
    if all(isinstance(v, (int, float)) and v > 0 for v in description['tune'][field]):
      ax.set_xscale('log')
    ax.set_xlabel(field)
    ax.grid(alpha=0.3)
  if not drawn:
    plt.close(fig)
    return None
  axes[0, 0].set_ylabel(f'final validation {metric.label}, mean over tuning seeds')
  values = [y for ax in axes[0] for line in ax.get_lines() for y in line.get_ydata()]
  limits = _cut_axis(axes[0, 0], 'y', values, [], metric)
  for ax in axes[0] if limits else []:
    for line in ax.get_lines():
      if line.get_marker() == 'o':
        for x, y in zip(line.get_xdata(), line.get_ydata()):
          _mark_beyond(ax, 'y', x, y, limits, line.get_color(), f'{y:.{metric.digits}f}')
  for ax, depth in zip(axes[0], panels):
    ax.set_title('; '.join(([f'{depth} layers'] if depth is not None else [])
                           + ([CUT_NOTE] if limits else [])), fontsize=9)
  fig.legend(loc='center left', bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
  return _save(fig, path, f'{title}: tuning', metric)


def plot_differences(path: str, rows: Sequence[dict], metric: Metric, split: str,
                     title: str) -> Optional[str]:
  """Each arm's paired difference from its group's reference, with its 95% CI and the per-seed
  differences (grey), one panel per group."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  rows = [r for r in rows if r['difference'].stats.n > 1]
  if not rows:
    return None
  groups = list(dict.fromkeys((r['group'], r['reference']) for r in rows))
  # an arm's label without the fields its panel's title names (its group), so that long labels
  # leave the axis its width
  labels = {id(r): ', '.join(p for p in _fmt_value(r['value']).split(', ')
                             if p not in (r['group'] or '').split(', ')) or _fmt_value(r['value'])
            for r in rows}
  width = max(8.0, 4.5 + 0.075 * max(map(len, labels.values())))
  fig, axes = plt.subplots(len(groups), 1, figsize=(width, 0.5 * len(rows) + 1.2 * len(groups)),
                           squeeze=False)
  for ax, (group_name, reference) in zip(axes[:, 0], groups):
    members = [r for r in rows if (r['group'], r['reference']) == (group_name, reference)]
    ys = np.arange(len(members))[::-1]
    for y, r in zip(ys, members):
      st = r['difference'].stats
      ax.plot(r['difference'].diffs, [y - 0.2] * st.n, 'x', color='0.5', ms=5)
      ax.errorbar([st.mean], [y], xerr=[[st.mean - st.ci_low], [st.ci_high - st.mean]],
                  color='C0', marker='o', capsize=3)
    ax.axvline(0.0, color='k', lw=0.8)
    values = [v for r in members for v in r['difference'].diffs]
    keep = [0.0, *(v for r in members for v in (r['difference'].stats.mean,
                                                  r['difference'].stats.ci_low,
                                                  r['difference'].stats.ci_high))]
    limits = _cut_axis(ax, 'x', values, keep, Metric('', '', '', False))
    for y, r in zip(ys, members) if limits else []:
      st, d = r['difference'].stats, metric.digits
      _mark_beyond(ax, 'x', y, st.mean, limits, 'C0', f'mean {st.mean:+.{d}f}')
      far = [v for v in r['difference'].diffs if not limits[0] <= v <= limits[1]]
      for v in far:
        _mark_beyond(ax, 'x', y - 0.2, v, limits, '0.5', '')
      if far:
        ax.annotate(f'{len(far)} seed{"s" if len(far) > 1 else ""} beyond: '
                    + ', '.join(f'{v:+.{d}f}' for v in far), (limits[1], y - 0.2),
                    textcoords='offset points', xytext=(-12, -9), ha='right', color='0.4',
                    fontsize=7)
    ax.set_yticks(ys, [labels[id(r)] for r in members])
    ax.set_title(f'{group_name or "all"} (vs {members[0]["reference"]})'
                 + (f'; {CUT_NOTE}' if limits else ''), fontsize=10)
    ax.set_xlabel(f'{split} {metric.label}: arm - reference (paired by seed)')
    ax.grid(alpha=0.3, axis='x')
  return _save(fig, path, f'{title}: paired differences, mean and 95% CI; x: each seed', metric)


def plot_settings(path: str, description: dict, settings: Sequence[Setting], metric: Metric,
                  title: str) -> Optional[str]:
  """One horizontal error bar (95% CI) per setting, validation and test side by side."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(settings) + 1.8), sharey=True)
  ys = np.arange(len(settings))[::-1]
  drawn = False
  for ax, split in zip(axes, ('valid', 'test')):
    shown = []
    for y, s in zip(ys, settings):
      stat = stats(s.finals(metric, split))
      if stat.n:
        ax.errorbar([stat.mean], [y], xerr=[_error_bar(stat)], color='C0', marker='o', capsize=3)
        shown.append((y, stat, s.finals(metric, split), 'C0'))
        drawn = True
      note = []
      if s.num_diverged:
        note.append(f'{s.num_diverged}/{len(s.runs)} diverged')
      if note:
        ax.annotate(', '.join(note), (1.0, y), xycoords=('axes fraction', 'data'),
                    xytext=(-4, 0), textcoords='offset points', ha='right', va='center',
                    color='C3', fontsize=8)
    ax.set_yticks(ys, [s.label for s in settings])
    if _cut_points(ax, 'x', shown, metric):
      ax.set_title(CUT_NOTE, fontsize=9)
    ax.set_xlabel(f'final {"validation" if split == "valid" else "test"} {metric.label}')
    ax.grid(alpha=0.3, axis='x')
  if not drawn:
    plt.close(fig)
    return None
  return _save(fig, path, f'{title}: final {metric.label_short}, mean and 95% CI over seeds',
               metric)


# ----------------------------------------------------------------------------------------------
# report.md


def _cell(stat: Stats, metric: Metric) -> tuple[str, str]:
  d = metric.digits
  if stat.n == 0:
    return '-', '-'
  if stat.n == 1:
    return f'{stat.mean:.{d}f}', '-'
  return f'{stat.mean:.{d}f} ± {stat.std:.{d}f}', f'[{stat.ci_low:.{d}f}, {stat.ci_high:.{d}f}]'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '|'.join('---:' if r else '---' for r in right) + '|']
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return '\n'.join(lines)


def depth_table(description: dict, settings: Sequence[Setting], metric: Metric, split: str) -> str:
  """One row per setting other than depth, one column per depth: mean ± 95% CI half width over
  seeds (the mean alone for one seed), with the diverged runs counted."""
  depths = sorted({s.values.get(DEPTH) for s in settings})
  labels = list(dict.fromkeys(setting_label(description, s.values, [DEPTH]) for s in settings))
  cells = {(setting_label(description, s.values, [DEPTH]), s.values.get(DEPTH)): s
           for s in settings}
  d = metric.digits
  rows = []
  for label in labels:
    row = [label]
    for depth in depths:
      setting = cells.get((label, depth))
      if setting is None:
        row.append('')
        continue
      stat = stats(setting.finals(metric, split))
      cell = '-' if stat.n == 0 else f'{stat.mean:.{d}f}' + (
          f' ± {stat.half_width:.{d}f}' if stat.n > 1 else '')
      if setting.num_diverged:
        cell += f' ({setting.num_diverged}/{len(setting.runs)} diverged)'
      row.append(cell + f' · {format_params(setting.num_params, True)}')
    rows.append(row)
  return _table(['setting'] + [f'{depth} layers' for depth in depths], rows,
                [False] + [True] * len(depths))


# ----------------------------------------------------------------------------------------------
# The tuning stage and paired comparisons


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


def tuning_scores(record: dict, field: str, value, metric: Metric) -> Optional[list[float]]:
  """The final validation metric of each tuning run of `record` (tuning_choices) at `value` of
  the tuned `field`: None while one has not finished (or none ran), [] where one diverged."""
  runs = [r for r in record['tuning'] if json.dumps(r.values[field]) == json.dumps(value)]
  if not runs or not all(r.finished for r in runs):
    return None
  if any(r.diverged for r in runs):
    return []
  return [metric.value(r.results.get('valid') or {}) for r in runs]


def tuning_table(description: dict, records: Sequence[dict], metric: Metric) -> str:
  """Final validation metric (mean over the tuning seeds) per setting and tuned value; the
  chosen value in bold; 'div' where a run diverged."""
  field = list(description['tune'])[0]
  values = description['tune'][field]
  rows = []
  for rec in records:
    row = [setting_label(description, rec['values'], [field])]
    for v in values:
      scores = tuning_scores(rec, field, v, metric)
      if scores is None:
        row.append('')
        continue
      cell = metric.format(np.mean(scores) / metric.scale) if scores else 'div'
      row.append(f'**{cell}**' if json.dumps(v) == json.dumps(rec['choice']) else cell)
    edge = rec['choice'] is not None and json.dumps(rec['choice']) in (json.dumps(values[0]),
                                                                      json.dumps(values[-1]))
    params = Setting(rec['values'], rec['tuning']).num_params
    rows.append(row + [format_params(params), 'edge of the grid' if edge else ''])
  short = _short([field])[field]
  return _table(['setting'] + [f'{short}={_fmt_value(v)}' for v in values] + ['params', 'note'],
                rows, [False] + [True] * len(values) + [True, False])


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
  short = _short(description['fields'])
  name = ', '.join(f'{short.get(k, k)}={_fmt_value(v)}' for k, v in spec['setting'].items())
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


def comparison_table(rows: Sequence[dict], metric: Metric,
                     adjusted: Optional[dict[str, list[float]]] = None) -> str:
  """The paired differences, one row per comparison; `adjusted` (default: `adjust(rows)`) gives
  the family-wide Holm and BH p-values of the rows."""
  d = metric.digits
  adjusted = adjusted or adjust(rows)
  p_text = lambda p: '-' if math.isnan(p) else f'{p:.3f}'
  body = []
  for i, row in enumerate(rows):
    diff = row['difference']
    st = diff.stats
    p_holm = adjusted['Holm'][i]
    ci = f'[{st.ci_low:+.{d}f}, {st.ci_high:+.{d}f}]' if st.n > 1 else '-'
    bound = f'{diff.equivalence_bound:.{d}f}' if st.n > 1 else '-'
    low, high = diff.median_ci
    median = (f'{diff.median:+.{d}f} [{low:+.{d}f}, {high:+.{d}f}]' if st.n > 1 else
              f'{diff.median:+.{d}f}' if st.n else '-')
    params = f'{format_params(row.get("params"), True)} / ' \
             f'{format_params(row.get("reference_params"), True)}'
    body.append([row['group'] or '-', _fmt_value(row['value']),
                 str(diff.pairs), str(diff.excluded),
                 f'{diff.better_in(metric.higher_is_better)}/{diff.pairs}',
                 f'{st.mean:+.{d}f}' if st.n else '-', ci, bound,
                 p_text(diff.p_value), p_text(p_holm), p_text(adjusted['BH'][i]),
                 p_text(diff.wilcoxon_p), median,
                 diff.verdict(metric.higher_is_better, p_holm), params])
  header = ['group', 'arm', 'pairs', 'excluded', 'better in', 'mean difference', '95% CI',
            'equivalence bound ±', 'p', 'Holm p', 'BH p', 'Wilcoxon p',
            'median difference [bootstrap 95%]', 'verdict', 'params arm / reference']
  right = [False, False, True, True, True, True, True, True, True, True, True, True, True, False,
           True]
  return _table(header, body, right)


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


def _header(sweep_dir: str, out: str, description: dict, runs: Sequence[Run],
            metric: Optional[Metric]) -> list[str]:
  """The report's opening lines: how it was made, the runs, the time, the metric."""
  counts: dict[str, int] = {}
  for r in runs:
    key = 'diverged' if r.diverged else r.status
    counts[key] = counts.get(key, 0) + 1
  dataset = next((r.results.get('dataset') for r in runs if r.results.get('dataset')), None)

  regen = f'python -m train.report --sweep_dir={sweep_dir}' + (f' --out={out}' if out != sweep_dir
                                                                else '')
  meta = [f'- Generated {datetime.datetime.now().strftime("%Y-%m-%d %H:%M")} by `{regen}`.']
  if description.get('config'):
    meta.append(f'- Sweep: `python -m train.sweep --config={description["config"]} '
                f'--sweep_dir={sweep_dir}`' + (
                    ' with ' + ' '.join(f'`--config.{k}={v}`' for k, v in
                                        description.get('forwarded_overrides', {}).items())
                    if description.get('forwarded_overrides') else '') + '.')
  meta.append(f'- {len(runs)} runs' + (f' of dataset `{dataset}`' if dataset else '') + ': '
              + ', '.join(f'{n} {s}' for s, n in sorted(counts.items())) + '.')
  times = [r.results.get('train_time_s') for r in runs if r.results.get('train_time_s')]
  platforms = sorted({str(r.results.get('platform')) for r in runs if r.results.get('platform')})
  if times:
    meta.append(f'- Training time: {metrics_lib.format_duration(sum(times))} in all, '
                f'{np.mean(times):.0f} s per completed run on average (training loop only; '
                f'{", ".join(platforms)}).')
  if metric:
    meta.append(f'- Metric: final {metric.label} on the validation and test splits '
                f'({"higher" if metric.higher_is_better else "lower"} is better). Mean ± sample '
                'standard deviation over seeds; 95% CI = mean ± t(0.975, n-1)·sd/√n. Diverged runs '
                '(status `diverged` or a non-finite final metric) are counted, not averaged.')
  return meta


def _runs_table(runs: Sequence[Run], metric: Optional[Metric]) -> str:
  """One row per run: status, step, final metrics, training time."""
  rows = []
  for r in runs:
    res = r.results
    if r.status == 'completed' and metric:
      valid, test = (f'{metric.value(res.get(split) or {}):.{metric.digits}f}'
                     for split in ('valid', 'test'))
    else:
      valid = test = '-'
    note = res.get('message', '') if r.status == 'diverged' else (
        'non-finite metric' if r.diverged else '')
    status = 'diverged' if r.diverged else r.status
    params = res.get('num_params')
    rows.append([r.name, status, str(res.get('step', '-')), valid, test,
                 str(res.get('train_time_s', '-')), note,
                 format_params(params if isinstance(params, int) else None)])
  label = metric.label_short if metric else 'metric'
  return _table(['run', 'status', 'step', f'valid {label}', f'test {label}', 'train s', 'note',
                 'params'], rows, [False, False, True, True, True, True, False, True])


def _results_section(description: dict, settings: Sequence[Setting], metric: Metric,
                     unchosen: Sequence[str] = ()) -> list:
  if not settings:
    return ['## Results by setting', '', 'No evaluation run has finished yet'
            + (' (the sweep is in its tuning stage: see "Tuning").' if description['tune']
               else '.'), '']
  fields = description['fields']
  short = _short(fields)
  header = [short[k] for k in fields] + ['seeds', 'diverged', f'valid {metric.label_short}',
                                         'valid 95% CI', f'test {metric.label_short}',
                                         'test 95% CI', 'params']
  rows = []
  for s in settings:
    valid = _cell(stats(s.finals(metric, 'valid')), metric)
    test = _cell(stats(s.finals(metric, 'test')), metric)
    seeds = str(len(s.finals(metric, 'valid')))
    if s.num_unfinished:
      seeds += f' ({s.num_unfinished} unfinished)'
    rows.append([_fmt_value(s.values.get(k)) for k in fields]
                + [seeds, f'{s.num_diverged}/{len(s.runs)}', *valid, *test,
                   format_params(s.num_params)])
  lines = []
  if DEPTH in fields:
    lines += [f'## Test {metric.label_short} by depth', '',
              f'Mean ± 95% CI half width over seeds ({metric.label}, '
              f'{"higher" if metric.higher_is_better else "lower"} is better) · parameters.', '',
              depth_table(description, settings, metric, 'test'), '']
  gains = [[s.label, f'{100 * g:.2f}%'] for s in settings
           if not math.isnan(g := plateau_gain(s, metric))]
  lines += ['## Results by setting', '', _table(header, rows, [False] * len(fields) + [True] * 7),
            '']
  if unchosen:
    lines += ['Not in the table: ' + '; '.join(unchosen) + ' (every tuning run diverged, so no '
              'value was chosen and no seeds ran; the "Tuning" table has them).', '']
  lines += ['## Plateau', '',
            'The relative improvement of the validation metric over the last quarter of '
            'training, mean over seeds (under 1%: trained to a plateau).', '',
            _table(['setting', 'last ¼ gain'], gains, [False, True]), '']
  return lines


def _extension_sentence(description: dict, records: Sequence[dict]) -> str:
  """What the sweep's 'extend' added to the tuned list (train.sweep.tune_stage), or ''; `records`
  (tuning_choices) say whether tuning has finished, before which no edge is known."""
  extend = description.get('extend')
  if not extend:
    return ''
  values = [_fmt_value(v) for v in list(description['tune'].values())[0]]
  added = [_fmt_value(v) for side in ('below', 'above') for v in extend.get(side, [])
           if _fmt_value(v) in values]
  offered = ', '.join(f'{side} {", ".join(map(_fmt_value, extend[side]))}' for side in extend)
  return (f' The list could grow where a setting chose its first or last value ({offered}), '
          'tuned for every setting before any evaluation seed ran: '
          + (f'{", ".join(added)} joined it' if added else 'nothing joined it')
          + (' so far (tuning has not finished, so it may still grow).'
             if any(r['pending'] for r in records) else
             '.' if added else ' (no setting chose an edge).'))


def _study_sections(description: dict, records: Sequence[dict], settings: Sequence[Setting],
                    metric: Metric) -> tuple[list, list]:
  """The tuning table and the paired comparisons (lines), and their rows for the plots."""
  lines = []
  if records:
    field = list(description['tune'])[0]
    tune_seeds = description.get('tune_seeds') or description['seeds'][:1]
    seeds = description['seeds']
    reused = [s for s in tune_seeds if s in seeds]
    lines += ['## Tuning', '',
              f'Every setting ran at each `{field}` with seed(s) '
              f'{", ".join(map(str, tune_seeds))}; the value with the best final validation '
              'metric' + (' averaged over those seeds' if len(tune_seeds) > 1 else '')
              + ' (bold; a value with a diverged tuning run is not chosen) is the one the '
              f'evaluation seeds {", ".join(map(str, seeds))} ran at'
              + (f' (seed {", ".join(map(str, reused))}: its tuning run at that value is also '
                 'its evaluation run).' if reused else
                 ', none of them used in tuning: the tables above and below hold no tuning run.')
              + _extension_sentence(description, records)
              + f' Final validation {metric.label}'
              + (', mean over the tuning seeds' if len(tune_seeds) > 1 else '') + ':', '',
              tuning_table(description, records, metric), '']
  rows = comparisons(description, settings, metric, 'test')
  adjusted = adjust(rows)
  for index in dict.fromkeys(row['spec'] for row in rows):
    part = [i for i, row in enumerate(rows) if row['spec'] == index]
    pairs = max(rows[i]['difference'].pairs for i in part)
    lines += [f'## Paired differences from {rows[part[0]]["reference_name"]} (test)', '']
    if index != rows[0]['spec']:
      lines += ['As in the section above, against this reference; Holm p and BH p adjusted for '
                f'all {len(rows)} comparisons of this report.', '']
    else:
      lines += [
              'Per seed, arm minus reference in the same group (same seed: same data order and '
              'the same initial values of the parameters they share); mean and 95% t interval '
              'of the differences. Equivalence bound: the interval lies inside ± this bound, so '
              'the study excludes differences larger than it. Pairs with a diverged or unfinished run '
              'are excluded and counted. Better in: the pairs in which the arm did better than its '
              f'reference, a count and not a test (with {pairs} pairs even {pairs}/{pairs} has a '
              f'two-sided sign-test p of {unanimous_sign_test_p(pairs):.2g}). p: the paired t '
              'test\'s (two-sided); Holm p and BH p: adjusted '
              f'for all {len(rows)} comparisons of this report as one family (Holm-Bonferroni, '
              'which bounds the chance of any false difference, and Benjamini-Hochberg, which '
              'bounds the expected share of false ones among those called), and a verdict '
              'whose interval excludes 0 but whose Holm p is 0.05 or more says "not after Holm". '
              'Robust to a run that blew up, beside the t interval: the Wilcoxon signed-rank '
              f'test\'s two-sided p (with {pairs} pairs it cannot go below '
              f'{wilcoxon_p(range(1, pairs + 1)):.2g}) and the median difference with its 95% '
              f'percentile bootstrap interval ({BOOTSTRAP_RESAMPLES:,} resamples, seed '
              f'{BOOTSTRAP_SEED}' + ('; with 5 pairs or fewer a resample holds one blown-up seed '
                                     'three times often enough that the interval reaches it, '
                                     'while the median stays put' if pairs <= 5 else '') + '). '
              'Params: the parameter counts of the arm and its reference.', '']
    lines += [comparison_table([rows[i] for i in part], metric,
                               {k: [v[i] for i in part] for k, v in adjusted.items()}), '']
  return lines, rows


def _evaluated(sweep_dir: str):
  """(description, runs, metric, settings at their chosen values, tuning records) of a sweep."""
  description, runs = read_sweep(sweep_dir)
  metric = choose_metric(runs)
  group(description, runs, metric)  # marks diverged runs
  final_runs, records = tuning_choices(description, runs)
  return description, runs, metric, group(description, final_runs, metric), records


def write_family(sweep_dirs: Sequence[str], out: str) -> str:
  """Writes `out`/family.md: the paired comparisons (test) of every sweep in `sweep_dirs`, with
  Holm and Benjamini-Hochberg adjustments over all of them as one family; returns its path."""
  sections, rows = [], []
  for sweep_dir in sweep_dirs:
    description, _, metric, settings, _ = _evaluated(sweep_dir)
    found = comparisons(description, settings, metric, 'test') if metric else []
    if not found:
      raise ValueError(f'{sweep_dir} has no paired comparisons (a sweep with finished runs and '
                       "a 'compare' entry in its sweep.json)")
    sections.append((sweep_dir, description, metric, len(rows), len(rows) + len(found)))
    rows += found
  adjusted = adjust(rows)
  regen = f'python -m train.report --family={",".join(sweep_dirs)} --out={out}'
  lines = ['# Paired comparisons corrected as one family', '',
           f'- Generated {datetime.datetime.now().strftime("%Y-%m-%d %H:%M")} by `{regen}`.',
           f'- The family: all {len(rows)} comparisons (test split) of the {len(sweep_dirs)} '
           'reports below, each arm against its reference paired by seed as in its own report. '
           'Holm p and BH p are adjusted over the whole family (Holm-Bonferroni: the chance of '
           'any false difference; Benjamini-Hochberg: the expected share of false ones among '
           'those called), not per report; p, Wilcoxon p and the intervals are each '
           'comparison\'s own. A verdict whose interval excludes 0 but whose family-wide Holm p '
           'is 0.05 or more says "not after Holm".', '']
  for sweep_dir, description, metric, start, stop in sections:
    title = description.get('config') or os.path.basename(os.path.normpath(sweep_dir))
    for index in dict.fromkeys(row['spec'] for row in rows[start:stop]):
      part = [i for i in range(start, stop) if rows[i]['spec'] == index]
      lines += [f'## {title}: against {rows[part[0]]["reference_name"]} ({metric.label}, '
                f'{"higher" if metric.higher_is_better else "lower"} is better; `{sweep_dir}`)',
                '', comparison_table([rows[i] for i in part], metric,
                                     {k: [v[i] for i in part] for k, v in adjusted.items()}), '']
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, 'family.md')
  files.atomic_write(path, lambda f: f.write('\n'.join(lines).encode('utf-8')))
  return path


def write_report(sweep_dir: str, out: Optional[str] = None, title: Optional[str] = None) -> str:
  """Writes report.md and the plots to `out` (default `sweep_dir`); returns report.md's path."""
  out = out or sweep_dir
  os.makedirs(out, exist_ok=True)
  description, runs, metric, settings, records = _evaluated(sweep_dir)
  title = title or description.get('config') or os.path.basename(os.path.normpath(sweep_dir))
  lines = [f'# Sweep report: {title}', '', *_header(sweep_dir, out, description, runs, metric),
           '']
  plots = []
  if metric is None:
    lines.append('No run has written a metric yet.')
  else:
    unchosen = [setting_label(description, r['values'], list(description['tune']))
                for r in records if r['tuning'] and r['choice'] is None and not r['pending']]
    lines += _results_section(description, settings, metric, unchosen)
    study_lines, comparison_rows = _study_sections(description, records, settings, metric)
    lines += study_lines
    plots.append(plot_curves(os.path.join(out, 'curves.png'), description, settings, metric,
                             title))
    if DEPTH in description['fields']:
      plots.insert(0, plot_depth(os.path.join(out, 'depth.png'), description, settings, metric,
                                 title))
    else:
      plots.insert(0, plot_settings(os.path.join(out, 'settings.png'), description, settings,
                                    metric, title))
    if records:
      plots.append(plot_tuning(os.path.join(out, 'tuning.png'), description, records, metric,
                               title))
    plots.append(plot_differences(os.path.join(out, 'differences.png'), comparison_rows, metric,
                                  'test', title))
  plots = [p for p in plots if p]
  if plots:
    lines += ['## Plots', '']
    for p in plots:
      lines += [f'![{os.path.basename(p)}]({os.path.relpath(p, out)})', '']
  lines += ['## Runs', '', _runs_table(runs, metric), '']
  path = os.path.join(out, 'report.md')
  files.atomic_write(path, lambda f: f.write('\n'.join(lines).encode('utf-8')))
  return path


def main(argv):
  from absl import flags
  FLAGS = flags.FLAGS
  if len(argv) > 1:
    raise SystemExit(f'error: unexpected arguments {argv[1:]}')
  if bool(FLAGS.sweep_dir) == bool(FLAGS.family):
    raise SystemExit('error: give either --sweep_dir=DIR (one report) or --family=DIR,DIR,... '
                     'with --out=DIR (several reports\' comparisons corrected together)')
  if FLAGS.family:
    if not FLAGS.out:
      raise SystemExit('error: --family needs --out=DIR, where family.md is written')
    dirs = [d for d in FLAGS.family.split(',') if d]
    missing = [d for d in dirs if not os.path.isdir(d)]
    if missing:
      raise SystemExit(f'error: --family names {", ".join(missing)}, not a sweep directory')
    try:
      path = write_family(dirs, FLAGS.out)
    except (ValueError, FileNotFoundError) as e:
      raise SystemExit(f'error: {e}')
  else:
    path = write_report(FLAGS.sweep_dir, FLAGS.out, FLAGS.title)
  print(f'wrote {path}')


if __name__ == '__main__':
  from absl import app, flags
  flags.DEFINE_string('sweep_dir', None, 'The sweep directory (train.sweep --sweep_dir).')
  flags.DEFINE_string('family', None, 'Sweep directories, comma-separated, whose comparisons are '
                      'corrected as one family: writes family.md to --out.')
  flags.DEFINE_string('out', None, 'Where report.md and the plots go (default: the sweep dir).')
  flags.DEFINE_string('title', None, 'Title of the report and plots (default: the sweep config).')
  from train import cli
  app.run(main, flags_parser=cli.parse_flags)
