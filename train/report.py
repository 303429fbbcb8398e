"""Report of a sweep: tables over seeds and plots, from the finished workdirs (what the runs say:
train.analysis; the plots: train.plots).

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

import datetime
import json
import math
import os
from typing import Optional, Sequence

import numpy as np

from train import files, metrics as metrics_lib
from train.analysis import (DEPTH, Run, Setting, adjust, arm_name, chose_edge, comparisons,
                            display_value, evaluated, format_params, plateau_gain, setting_label,
                            short_names, tuning_scores)
from train.plots import plot_curves, plot_depth, plot_differences, plot_settings, plot_tuning
from train.statistics import (BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, Metric, Stats, stats,
                              unanimous_sign_test_p, wilcoxon_p)


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
    params = Setting(rec['values'], rec['tuning']).num_params
    rows.append(row + [format_params(params),
                       'edge of the grid' if chose_edge(description, rec) else ''])
  short = short_names([field])[field]
  return _table(['setting'] + [f'{short}={display_value(v)}' for v in values] + ['params', 'note'],
                rows, [False] + [True] * len(values) + [True, False])


def comparison_parts(rows: Sequence[dict], adjusted: dict[str, list[float]], start: int = 0,
                     stop: Optional[int] = None) -> list[tuple[list[dict], dict]]:
  """rows[start:stop] split by comparison (their 'spec'), each part with its slice of the
  family-wide `adjusted` p-values: [(rows, {'Holm': [...], 'BH': [...]}), ...]."""
  span = range(start, len(rows) if stop is None else stop)
  parts = []
  for index in dict.fromkeys(rows[i]['spec'] for i in span):
    part = [i for i in span if rows[i]['spec'] == index]
    parts.append(([rows[i] for i in part], {k: [v[i] for i in part] for k, v in adjusted.items()}))
  return parts


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
    body.append([row['group'] or '-', display_value(row['value']),
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
  short = short_names(fields)
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
    rows.append([display_value(s.values.get(k)) for k in fields]
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
  values = [display_value(v) for v in list(description['tune'].values())[0]]
  added = [display_value(v) for side in ('below', 'above') for v in extend.get(side, [])
           if display_value(v) in values]
  offered = ', '.join(f'{side} {", ".join(map(display_value, extend[side]))}' for side in extend)
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
    edges = [f'{setting_label(description, r["values"], [field])} '
             f'({display_value(r["choice"])})' for r in records if chose_edge(description, r)]
    if edges and not any(r['pending'] for r in records):
      lines += [f'Chosen at an edge of the {"grown " if description.get("extend") else ""}'
                f'list: {"; ".join(edges)}. For these a value beyond it might have done better, '
                'which this sweep cannot tell.', '']
  rows = comparisons(description, settings, metric, 'test')
  for part, part_adjusted in comparison_parts(rows, adjust(rows)):
    pairs = max(row['difference'].pairs for row in part)
    lines += [f'## Paired differences from {part[0]["reference_name"]} (test)', '']
    if part[0]['spec'] != rows[0]['spec']:
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
    lines += [comparison_table(part, metric, part_adjusted), '']
  return lines, rows


def glance_tables(columns: Sequence[tuple[str, Metric, int, int]], rows: Sequence[dict],
                  adjusted: dict[str, list[float]]) -> list[str]:
  """One table per reference: a row per (group, arm), a column per `columns` entry (its name,
  metric and slice of `rows`), each cell the mean paired difference with its 95% interval, bold
  where the family-wide Holm p is under 0.05; '-' where that sweep lacks the comparison. The arm
  is named without the fields its group names."""
  tables: dict[str, dict[tuple[str, str], dict[int, str]]] = {}
  for column, (_, metric, start, stop) in enumerate(columns):
    d = metric.digits
    for i in range(start, stop):
      row, st = rows[i], rows[i]['difference'].stats
      cell = f'{st.mean:+.{d}f} [{st.ci_low:+.{d}f}, {st.ci_high:+.{d}f}]' if st.n > 1 else '-'
      if st.n > 1 and adjusted['Holm'][i] < 0.05:
        cell = f'**{cell}**'
      key = (row['group'] or '-', arm_name(row))
      tables.setdefault(row['reference_name'], {}).setdefault(key, {})[column] = cell
  lines = []
  for reference, cells in tables.items():
    groups = list(dict.fromkeys(group for group, _ in cells))
    body = [[group, arm] + [found.get(c, '-') for c in range(len(columns))]
            for (group, arm), found in sorted(cells.items(), key=lambda kv: groups.index(kv[0][0]))]
    header = ['group', 'arm'] + [f'{name} ({metric.label})' for name, metric, _, _ in columns]
    lines += [f'### Against {reference}', '',
              _table(header, body, [False, False] + [True] * len(columns)), '']
  return lines


def write_family(sweep_dirs: Sequence[str], out: str) -> str:
  """Writes `out`/family.md: the paired comparisons (test) of every sweep in `sweep_dirs`, with
  Holm and Benjamini-Hochberg adjustments over all of them as one family; returns its path."""
  sections, rows = [], []
  for sweep_dir in sweep_dirs:
    description, _, metric, settings, _ = evaluated(sweep_dir)
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
  titles = [description.get('config') or os.path.basename(os.path.normpath(sweep_dir))
            for sweep_dir, description, *_ in sections]
  names = [title.rpartition(':')[2] for title in titles]
  if len(set(names)) < len(names):
    names = [sweep_dir for sweep_dir, *_ in sections]
  lines += ['## At a glance', '',
            'Each arm minus its reference, mean paired difference and 95% t interval, a column '
            'per report; bold: family-wide Holm p under 0.05; -: not in that report, or fewer '
            'than 2 pairs. The sections below give each comparison whole.', '',
            *glance_tables([(name, metric, start, stop) for name, (_, _, metric, start, stop)
                            in zip(names, sections)], rows, adjusted)]
  for title, (sweep_dir, description, metric, start, stop) in zip(titles, sections):
    for part, part_adjusted in comparison_parts(rows, adjusted, start, stop):
      lines += [f'## {title}: against {part[0]["reference_name"]} ({metric.label}, '
                f'{"higher" if metric.higher_is_better else "lower"} is better; `{sweep_dir}`)',
                '', comparison_table(part, metric, part_adjusted), '']
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, 'family.md')
  files.atomic_write(path, lambda f: f.write('\n'.join(lines).encode('utf-8')))
  return path


def write_report(sweep_dir: str, out: Optional[str] = None, title: Optional[str] = None) -> str:
  """Writes report.md and the plots to `out` (default `sweep_dir`); returns report.md's path."""
  out = out or sweep_dir
  os.makedirs(out, exist_ok=True)
  description, runs, metric, settings, records = evaluated(sweep_dir)
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
