"""The plots of a sweep's report (matplotlib, imported when a plot is drawn): curves, final metric
by depth or by setting, tuning, paired differences. An axis that one far-off value would set is cut
to the others, and a triangle at its edge marks each value cut off (robust_limits).
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np

from train.analysis import DEPTH, Run, Setting, arm_name, setting_label, tuning_scores
from train.statistics import Metric, Stats, stats


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
  fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))  # room for the suptitle
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
  fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))  # room for the suptitle
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
  labels = {id(r): arm_name(r) for r in rows}
  width = max(8.0, 4.5 + 0.075 * max(map(len, labels.values())))
  sizes = [sum((r['group'], r['reference']) == group for r in rows) for group in groups]
  fig, axes = plt.subplots(len(groups), 1, figsize=(width, 0.5 * len(rows) + 1.2 * len(groups)),
                           squeeze=False, gridspec_kw={'height_ratios': [n + 2 for n in sizes]})
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
    ax.set_title(f'{group_name or "all"} (vs {members[0]["reference_name"]})'
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
