"""train.report on hand-made workdirs: statistics over seeds checked against numbers worked out by
hand, diverged and unfinished runs, the Student t quantile, the plots."""
import json
import math
import os

import numpy as np
import pytest
import scipy.stats

from tests.trainer_utils import write_old_names
from train import analysis, plots, report, statistics

# Two-sided 95% Student t critical values t(0.975, df), df = 1..30, from the printed tables.
T_TABLE = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
           2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
           2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def test_t_quantile_matches_the_table():
  for df, expected in enumerate(T_TABLE, start=1):
    assert statistics.t_quantile(0.975, df) == pytest.approx(expected, abs=6e-4), df
  assert statistics.t_quantile(0.95, 10) == pytest.approx(1.812, abs=6e-4)
  assert statistics.t_quantile(0.995, 5) == pytest.approx(4.032, abs=6e-4)
  with pytest.raises(ValueError):
    statistics.t_quantile(0.975, 0)


def test_t_quantile_matches_scipy():
  stats = pytest.importorskip('scipy.stats')
  for df in range(1, 61):
    for p in (0.9, 0.975, 0.995):
      assert statistics.t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)


def test_stats_of_a_known_sample():
  s = statistics.stats([1.0, 2.0, 3.0, 4.0, 5.0])
  # mean 3, sd sqrt(2.5) = 1.58114, half width t(0.975, 4) * sd / sqrt(5) = 2.776445 * 0.707107
  assert (s.n, s.mean) == (5, 3.0)
  assert s.std == pytest.approx(math.sqrt(2.5))
  assert s.half_width == pytest.approx(1.963243, abs=1e-6)
  assert (s.ci_low, s.ci_high) == (pytest.approx(1.036757, abs=1e-6),
                                   pytest.approx(4.963243, abs=1e-6))
  one = statistics.stats([2.5])
  assert one.n == 1 and one.mean == 2.5 and math.isnan(one.std) and math.isnan(one.ci_low)
  assert statistics.stats([]).n == 0


# ----------------------------------------------------------------------------------------------
# A hand-made sweep: between {none, relu} x depth {2, 4} x seeds {0, 1, 2}.

FIELDS = ['model.between', 'model.num_layers', 'model.residual']
VALID = {  # final validation bpc per (between, depth) and seed; None: no final metric
    ('none', 2): [1.5, 1.6, 1.8],
    ('none', 4): [1.7, 1.9, float('nan')],  # seed 2 completed with a non-finite metric: diverged
    ('relu', 2): [1.6, 1.7, None],         # seed 2 preempted: unfinished
    ('relu', 4): [2.0, 2.2, None],         # seed 2 diverged
}
STATUS = {('relu', 2, 2): 'preempted', ('relu', 4, 2): 'diverged'}


def _write(path, value):
  with open(path, 'w') as f:
    json.dump(value, f)


def _make_run(sweep_dir, name, status, values, seed, valid=None, steps=(100, 200, 300),
              dataset='ptb_char', key='bpc'):
  workdir = os.path.join(sweep_dir, name)
  os.makedirs(workdir)
  config = {'dataset': dataset, 'bptt_length': 64, 'loss_reduction': 'token', 'seed': seed,
            'model': {'between': values['model.between'],
                      'num_layers': values['model.num_layers'],
                      'residual': values['model.residual']}}
  _write(os.path.join(workdir, 'config.json'), config)
  results = {'status': status, 'dataset': dataset, 'step': steps[-1]}
  if status == 'completed':
    results.update(valid={'loss': valid * math.log(2), key: valid},
                   test={'loss': (valid + 0.1) * math.log(2), key: valid + 0.1},
                   train_time_s=10.0, platform='cpu',
                   num_params=1000 * values['model.num_layers'] + 5 * values['model.residual'])
  elif status == 'diverged':
    results.update(step=150, message='non-finite loss nan (gradient norm nan) at step 150')
  _write(os.path.join(workdir, 'results.json'), results)
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    last = valid if valid is not None and math.isfinite(valid) else 3.0
    for i, step in enumerate(steps):
      f.write(json.dumps({'step': step, 'split': 'train', 'loss': 9.0}) + '\n')
      f.write(json.dumps({'step': step, 'split': 'valid', key: last + (len(steps) - 1 - i) * 0.5,
                          'loss': 1.0}) + '\n')


def make_sweep(sweep_dir, with_description=True):
  points = []
  for (between, depth), finals in VALID.items():
    for seed, valid in enumerate(finals):
      name = f'between={between},num_layers={depth},seed={seed}'
      values = {'model.between': between, 'model.num_layers': depth, 'model.residual': False}
      status = STATUS.get((between, depth, seed), 'completed')
      _make_run(sweep_dir, name, status, values, seed, valid)
      points.append({'name': name, 'seed': seed, 'values': values})
  # residual at depth 4, as an extra point, two seeds
  for seed, valid in enumerate([1.55, 1.65]):
    name = f'num_layers=4,residual=True,seed={seed}'
    values = {'model.between': 'none', 'model.num_layers': 4, 'model.residual': True}
    _make_run(sweep_dir, name, 'completed', values, seed, valid)
    points.append({'name': name, 'seed': seed, 'values': values})
  points.append({'name': 'between=none,num_layers=2,seed=9', 'seed': 9,  # never started
                 'values': {'model.between': 'none', 'model.num_layers': 2,
                            'model.residual': False}})
  if with_description:
    _write(os.path.join(sweep_dir, 'sweep.json'), {
        'config': 'configs/fake.py:ptb', 'fields': FIELDS,
        'axes': {'model.between': ['none', 'relu'], 'model.num_layers': [2, 4]},
        'base': {'model.between': 'none', 'model.num_layers': 2, 'model.residual': False},
        'points': points})


def _row(text, prefix):
  rows = [line for line in text.splitlines() if line.startswith(prefix)]
  assert len(rows) == 1, (prefix, rows)
  return [c.strip() for c in rows[0].strip('|').split('|')]


def test_report_statistics_diverged_and_plots(tmp_path):
  sweep_dir, out = str(tmp_path / 'sweep'), str(tmp_path / 'out')
  os.makedirs(sweep_dir)
  make_sweep(sweep_dir)
  path = report.write_report(sweep_dir, out)
  assert path == os.path.join(out, 'report.md')
  text = open(path).read()
  assert ('- 15 runs of dataset `ptb_char`: 11 completed, 2 diverged, 1 missing, 1 preempted.'
          in text)

  description, runs = analysis.read_sweep(sweep_dir)
  metric = analysis.choose_metric(runs)
  assert metric.key == 'bpc'
  settings = {(s.values['model.between'], s.values['model.num_layers'],
               s.values['model.residual']): s for s in analysis.group(description, runs, metric)}
  # none, 2 layers: 1.5, 1.6, 1.8 -> mean 1.633333, sd sqrt(0.046667 / 2) = 0.152753,
  # half width 4.302653 * 0.152753 / sqrt(3) = 0.379461 (the never-started seed 9 is unfinished)
  s = statistics.stats(settings['none', 2, False].finals(metric, 'valid'))
  assert (s.n, s.mean, s.std) == (3, pytest.approx(1.633333, abs=1e-6),
                                   pytest.approx(0.152753, abs=1e-6))
  assert (s.ci_low, s.ci_high) == (pytest.approx(1.253872, abs=1e-5),
                                   pytest.approx(2.012795, abs=1e-5))
  assert _row(text, '| none | 2 | False |') == [
      'none', '2', 'False', '3 (1 unfinished)', '0/4', '1.633 ± 0.153', '[1.254, 2.013]',
      '1.733 ± 0.153', '[1.354, 2.113]', '2,000']
  # none, 4 layers: seed 2 completed with NaN -> diverged; 1.7, 1.9: mean 1.8, sd 0.141421,
  # half width 12.706205 * 0.141421 / sqrt(2) = 1.270620
  assert _row(text, '| none | 4 | False |') == [
      'none', '4', 'False', '2', '1/3', '1.800 ± 0.141', '[0.529, 3.071]', '1.900 ± 0.141',
      '[0.629, 3.171]', '4,000']
  # relu, 2 layers: seed 2 preempted -> unfinished, not diverged
  assert _row(text, '| relu | 2 | False |')[3:5] == ['2 (1 unfinished)', '0/3']
  # relu, 4 layers: seed 2 diverged (status)
  assert _row(text, '| relu | 4 | False |')[3:6] == ['2', '1/3', '2.100 ± 0.141']
  assert _row(text, '| none | 4 | True |')[3:6] == ['2', '0/2', '1.600 ± 0.071']
  assert '| between=relu,num_layers=4,seed=2 | diverged | 150 | - | - | - | non-finite loss nan' \
      in text
  # the depth table (test = valid + 0.1): mean ± half width; residual, only at 4 layers, is a row
  assert _row(text, '| between=none |') == ['between=none', '1.733 ± 0.379 · 2k',
                                             '1.900 ± 1.271 (1/3 diverged) · 4k']
  assert _row(text, '| between=relu |')[2].endswith('(1/3 diverged) · 4k')
  assert _row(text, '| between=none, residual=True |') == [
      'between=none, residual=True', '', '1.700 ± 0.635 · 4k']
  assert ('| between=none,num_layers=4,seed=2 | diverged | 300 | nan | nan | 10.0 '
          '| non-finite metric | 4,000 |') in text
  # plots: written, PNG, referenced from the report
  for name in ('depth.png', 'curves.png'):
    with open(os.path.join(out, name), 'rb') as f:
      data = f.read()
    assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 20_000
    assert f'({name})' in text
  assert not os.path.exists(os.path.join(out, 'settings.png'))


def test_labels_show_extra_fields_only_where_they_differ_from_the_base(tmp_path):
  make_sweep(str(tmp_path))
  description, _ = analysis.read_sweep(str(tmp_path))
  label = lambda **v: analysis.setting_label(description, {**{k: None for k in FIELDS}, **v},
                                           exclude=['model.num_layers'])
  assert label(**{'model.between': 'relu', 'model.residual': False}) == 'between=relu'
  assert label(**{'model.between': 'none', 'model.residual': True}) == \
      'between=none, residual=True'


def test_labels_write_a_float_that_is_a_small_fraction_as_one():
  """ffn_factor 4/3 reads '4/3'; a float that no fraction of a denominator up to 12 equals, or
  a short one, as written."""
  description = {'fields': ['model.ffn_factor'], 'axes': {}, 'base': {'model.ffn_factor': 0.0},
                 'extra': [{'model.ffn_factor': v} for v in (4 / 3, 0.123456789, 0.5, 0.0)]}
  label = lambda v: analysis.setting_label(description, {'model.ffn_factor': v})
  assert label(4 / 3) == 'ffn_factor=4/3'
  assert label(0.123456789) == 'ffn_factor=0.123456789'
  assert label(0.5) == 'ffn_factor=0.5'
  assert label(1 / 3 + 1e-12) == f'ffn_factor={1 / 3 + 1e-12!r}'


def test_a_setting_equal_to_the_base_is_named_by_the_field_its_extra_points_vary():
  """Extras {between: none}, {between: relu} over a base with between=none: the first is
  'between=none', not 'base'; a field every extra sets alike stays unnamed."""
  description = {'fields': ['model.between', 'model.num_layers'], 'axes': {},
                 'base': {'model.between': 'none', 'model.num_layers': 8},
                 'extra': [{'model.between': b, 'model.num_layers': 8} for b in ('none', 'relu')]}
  label = lambda between: analysis.setting_label(
      description, {'model.between': between, 'model.num_layers': 8})
  assert label('none') == 'between=none'
  assert label('relu') == 'between=relu'
  description['extra'] = [{'model.num_layers': 8}]
  assert label('none') == 'base'


def test_report_without_sweep_json_infers_the_fields(tmp_path):
  """The fields are read as today's config reads them: the old `model.residual` as the block."""
  make_sweep(str(tmp_path), with_description=False)
  description, runs = analysis.read_sweep(str(tmp_path))
  assert description['fields'] == ['model.between', 'model.block', 'model.num_layers']
  assert len(runs) == 14  # the never-started point has no workdir
  text = open(report.write_report(str(tmp_path))).read()
  assert '| between | block | num_layers | seeds |' in text


@pytest.mark.parametrize('with_description', [True, False])
def test_a_sweep_of_old_and_new_names_reports_as_one(tmp_path, with_description):
  """Half the runs written with today's names, half with earlier ones: the same fields, groups,
  statistics and header as the sweep written with today's names alone."""
  texts = {}
  for mixed in (False, True):
    sweep_dir = str(tmp_path / f'mixed={mixed}' / 'runs')
    os.makedirs(sweep_dir)
    make_sweep(sweep_dir, with_description)
    if mixed:
      for name in sorted(os.listdir(sweep_dir))[::2]:
        if os.path.isdir(os.path.join(sweep_dir, name)):
          write_old_names(os.path.join(sweep_dir, name))
    description, runs = analysis.read_sweep(sweep_dir)
    assert {r.results.get('dataset') for r in runs if r.results} == {'ptb_char'}
    text = open(report.write_report(sweep_dir)).read()
    texts[mixed] = [line.replace(sweep_dir, 'SWEEP') for line in text.splitlines()
                    if not line.startswith('- Generated')]
  assert texts[True] == texts[False]
  runs = 15 if with_description else 14  # without sweep.json, no point is known to be missing
  assert any(line.startswith(f'- {runs} runs of dataset `ptb_char`: 11 completed, 2 diverged')
             for line in texts[True])


def test_classification_accuracy_in_percent_and_settings_plot(tmp_path):
  sweep_dir = str(tmp_path)
  points = []
  for activation, finals in (('tanh', [0.80, 0.82, 0.84]), ('relu', [0.5, None, None])):
    for seed, acc in enumerate(finals):
      name = f'activation={activation},seed={seed}'
      values = {'model.activation': activation}
      status = 'completed' if acc is not None else 'diverged'
      workdir = os.path.join(sweep_dir, name)
      os.makedirs(workdir)
      _write(os.path.join(workdir, 'results.json'), {
          'status': status, 'dataset': 'mnist1d', 'step': 100,
          **({'valid': {'loss': 0.5, 'accuracy': acc}, 'test': {'loss': 0.5, 'accuracy': acc}}
             if acc is not None else {'message': 'nan'})})
      with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
        for step in (50, 100):
          f.write(json.dumps({'step': step, 'split': 'valid', 'loss': 1.0,
                              'accuracy': (acc or 0.1) * step / 100}) + '\n')
      points.append({'name': name, 'seed': seed, 'values': values})
  _write(os.path.join(sweep_dir, 'sweep.json'), {
      'config': 'configs/fake.py:mnist1d', 'fields': ['model.activation'],
      'axes': {'model.activation': ['tanh', 'relu']}, 'base': {'model.activation': 'tanh'},
      'points': points})
  text = open(report.write_report(sweep_dir)).read()
  # 80, 82, 84 %: mean 82, sd 2, half width 4.302653 * 2 / sqrt(3) = 4.968
  assert _row(text, '| tanh |')[1:5] == ['3', '0/3', '82.00 ± 2.00', '[77.03, 86.97]']
  assert _row(text, '| relu |')[1:5] == ['1', '2/3', '50.00', '-']
  assert 'final accuracy (%)' in text and '(higher is better)' in text
  assert os.path.getsize(os.path.join(sweep_dir, 'settings.png')) > 10_000
  assert os.path.exists(os.path.join(sweep_dir, 'curves.png'))


def test_plot_axes_are_cut_to_the_metric_range():
  """A t interval over 3 seeds can reach past 100% accuracy or below 0 bpc; the axes stop there."""
  accuracy = statistics.pick_metric({'accuracy': 0.9})
  limits = []
  plots._cut_to_bounds(lambda low, high: limits.append((low, high)), (-40.0, 112.0), accuracy)
  margin = 0.02 * 152.0
  assert limits == [(pytest.approx(-margin), pytest.approx(100.0 + margin))]
  bpc = statistics.pick_metric({'bpc': 2.0, 'accuracy': 0.5})
  plots._cut_to_bounds(lambda low, high: limits.append((low, high)), (-1.0, 9.0), bpc)
  assert limits[-1] == (pytest.approx(-0.2), 9.0)


# ----------------------------------------------------------------------------------------------
# Paired differences


def test_paired_difference_pairs_by_seed_and_excludes_diverged_pairs():
  reference = {0: 1.50, 1: 1.60, 2: 1.80, 3: 1.70, 4: 1.65}
  arm = {0: 1.52, 1: 1.61, 2: float('nan'), 3: 1.72, 5: 1.0}  # seed 2 diverged, 4 and 5 unpaired
  d = statistics.paired_difference(arm, reference)
  assert (d.pairs, d.excluded) == (3, 3)
  assert d.diffs == pytest.approx([0.02, 0.01, 0.02])
  expected = scipy.stats.t.ppf(0.975, 2) * np.std([0.02, 0.01, 0.02], ddof=1) / math.sqrt(3)
  assert d.stats.mean == pytest.approx(0.05 / 3)
  assert d.stats.half_width == pytest.approx(expected)
  assert d.equivalence_bound == pytest.approx(0.05 / 3 + expected)
  assert d.verdict(higher_is_better=False) == 'worse'  # the interval is above 0
  # The pairing is what makes it tell: the arms' own intervals overlap widely.
  arm_stats = statistics.stats([arm[s] for s in (0, 1, 3)])
  ref_stats = statistics.stats([reference[s] for s in (0, 1, 3)])
  assert arm_stats.ci_low < ref_stats.ci_high and ref_stats.ci_low < arm_stats.ci_high
  same = statistics.paired_difference({0: 1.0, 1: 2.0, 2: 3.0}, {0: 1.1, 1: 1.9, 2: 3.05})
  assert same.verdict(False) == 'no difference detected'
  assert statistics.paired_difference({0: 1.0}, {0: 2.0}).verdict(False) == 'too few pairs'


def test_paired_p_value_is_scipys_paired_t_test():
  reference = {0: 1.50, 1: 1.60, 2: 1.80, 3: 1.70, 4: 1.65}
  arm = {0: 1.52, 1: 1.58, 2: 1.86, 3: 1.72, 4: 1.69}
  d = statistics.paired_difference(arm, reference)
  want = scipy.stats.ttest_rel([arm[s] for s in range(5)], [reference[s] for s in range(5)])
  assert d.p_value == pytest.approx(want.pvalue, rel=1e-9)
  assert math.isnan(statistics.paired_difference({0: 1.0}, {0: 2.0}).p_value)
  assert statistics.paired_difference({0: 2.0, 1: 3.0}, {0: 1.0, 1: 2.0}).p_value == 0.0


def test_better_in_counts_the_pairs_the_arm_won_whatever_one_outlier_does_to_the_interval():
  # One seed collapsed (the linear cell's case): worse in every seed, yet the interval spans 0.
  reference = {0: 97.9, 1: 98.0, 2: 97.9, 3: 97.0, 4: 98.2}
  arm = {0: 93.0, 1: 94.0, 2: 18.3, 3: 87.3, 4: 93.3}
  d = statistics.paired_difference(arm, reference)
  assert d.stats.ci_low < 0 < d.stats.ci_high
  assert d.better_in(higher_is_better=True) == 0
  assert d.better_in(higher_is_better=False) == 5
  tie = statistics.paired_difference({0: 1.0, 1: 2.0, 2: float('nan')}, {0: 1.0, 1: 1.5, 2: 1.0})
  assert (tie.better_in(True), tie.better_in(False), tie.pairs) == (1, 0, 2)


def test_a_unanimous_better_in_count_has_the_sign_tests_p_of_two_halves_to_the_pairs():
  # n of n pairs (or 0 of n) under the null: 2 * (1/2)^n.
  assert statistics.unanimous_sign_test_p(5) == pytest.approx(0.0625)
  assert statistics.unanimous_sign_test_p(3) == pytest.approx(0.25)
  assert statistics.unanimous_sign_test_p(1) == statistics.unanimous_sign_test_p(0) == 1.0


def test_holm_adjusts_each_p_by_its_rank_and_keeps_the_order():
  # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 -> 0.06 (non-decreasing)
  got = statistics.holm([0.01, 0.04, math.nan, 0.03, 0.005])
  assert got[:2] == pytest.approx([0.03, 0.06]) and math.isnan(got[2])
  assert got[3:] == pytest.approx([0.06, 0.02])
  assert statistics.holm([0.6, 0.9]) == [1.0, 1.0]
  assert statistics.holm([]) == []


def test_a_verdict_the_family_does_not_support_says_so():
  d = statistics.paired_difference({0: 1.52, 1: 1.61, 2: 1.72}, {0: 1.50, 1: 1.60, 2: 1.70})
  assert d.verdict(False) == 'worse'
  assert d.verdict(False, adjusted_p=0.2) == 'worse (not after Holm)'
  assert d.verdict(False, adjusted_p=0.01) == 'worse'


def test_best_tuned_value_is_the_validation_best_and_skips_diverged_values():
  def results(bpc, status='completed'):
    return {'status': status, 'valid': {'bpc': bpc, 'loss': bpc}} if status == 'completed' \
        else {'status': status}
  candidates = [(0.001, results(1.9)), (0.01, results(1.5)), (0.1, results(0, 'diverged'))]
  assert statistics.best_tuned_value(candidates) == 0.01
  # two tuning seeds: the mean decides, and one diverged seed rules a value out
  candidates = [(0.001, results(1.6)), (0.001, results(1.6)), (0.01, results(1.4)),
                (0.01, results(2.0)), (0.1, results(1.0)), (0.1, results(0, 'diverged'))]
  assert statistics.best_tuned_value(candidates) == 0.001
  accuracy = [(1, {'status': 'completed', 'valid': {'accuracy': 0.9}}),
              (2, {'status': 'completed', 'valid': {'accuracy': 0.95}})]
  assert statistics.best_tuned_value(accuracy) == 2  # higher is better
  assert statistics.best_tuned_value([(1, results(0, 'diverged'))]) is None


def test_report_pairs_arms_by_seed_with_a_diverged_run_in_one_arm(tmp_path):
  """relu vs none at 4 layers: seed 2 diverged in relu and none; the pairs left are seeds 0, 1."""
  make_sweep(str(tmp_path))
  path = os.path.join(str(tmp_path), 'sweep.json')
  description = json.load(open(path))
  description['compare'] = {'field': 'model.between', 'reference': 'none'}
  _write(path, description)
  text = open(report.write_report(str(tmp_path))).read()
  assert '## Paired differences from model.between=none (test)' in text
  assert 'with 2 pairs even 2/2 has a two-sided sign-test p of 0.5)' in text
  four = _row(text, '| num_layers=4 | relu |')
  assert four[2:6] == ['2', '1', '0/2', '+0.300']  # (2.0 - 1.7) and (2.2 - 1.9) on test (+0.1 each)
  two = _row(text, '| num_layers=2 | relu |')
  assert two[2:6] == ['2', '1', '0/2', '+0.100']  # seed 2 of relu unfinished
  assert os.path.exists(tmp_path / 'differences.png')


def test_report_pairs_against_a_reference_setting_within_each_value_of_by(tmp_path):
  """compare={'setting': ..., 'by': [...]}: per depth, relu and the residual extra point against
  between=none without residual at that depth (as the separated activations against tanh with
  the same cell_clip)."""
  make_sweep(str(tmp_path))
  path = os.path.join(str(tmp_path), 'sweep.json')
  description = json.load(open(path))
  description['compare'] = {'setting': {'model.between': 'none', 'model.residual': False},
                            'by': ['model.num_layers']}
  _write(path, description)
  text = open(report.write_report(str(tmp_path))).read()
  assert ('## Paired differences from between=none, residual=False with the same num_layers '
          '(test)') in text
  relu2 = _row(text, '| num_layers=2 | between=relu, num_layers=2 |')
  assert relu2[2:6] == ['2', '1', '0/2', '+0.100']  # seed 2 of relu unfinished
  relu4 = _row(text, '| num_layers=4 | between=relu, num_layers=4 |')
  assert relu4[2:6] == ['2', '1', '0/2', '+0.300']
  residual4 = _row(text, '| num_layers=4 | between=none, num_layers=4, residual=True |')
  # (1.65 - 1.8 + 1.75 - 2.0) / 2 on test; the reference's diverged seed 2 is counted as excluded
  assert residual4[2:6] == ['2', '1', '2/2', '-0.200']
  assert '| num_layers=2 | between=none, num_layers=4' not in text


def test_a_list_of_comparisons_makes_a_section_each_adjusted_together(tmp_path):
  """compare=[..., {... 'arms': ...}]: the residual extra point at 4 layers is also paired with
  relu at its depth (the only arm with residual=True); Holm over all 4 comparisons, in the report
  and in a family of one."""
  make_sweep(str(tmp_path))
  path = os.path.join(str(tmp_path), 'sweep.json')
  description = json.load(open(path))
  description['compare'] = [
      {'setting': {'model.between': 'none', 'model.residual': False}, 'by': ['model.num_layers']},
      {'setting': {'model.between': 'relu'}, 'by': ['model.num_layers'],
       'arms': {'model.residual': [True]}}]
  _write(path, description)
  text = open(report.write_report(str(tmp_path))).read()
  sections = text.split('## Paired differences from ')[1:3]
  first, second = (part.split('\n## ')[0] for part in sections)
  assert first.startswith('between=none, residual=False with the same num_layers (test)')
  assert second.startswith('between=relu with the same num_layers (test)')
  assert 'Holm p and BH p adjusted for all 4 comparisons of this report' in second
  header = _row(first, '| group | arm |')
  residual = '| num_layers=4 | between=none, num_layers=4, residual=True |'
  row = _row(second, residual)
  assert len([line for line in second.splitlines() if line.startswith('| num_layers')]) == 1
  assert row[header.index('mean difference')] == '-0.500'  # (1.65 - 2.1 + 1.75 - 2.3) / 2
  p = lambda arm, ref: statistics.paired_difference(arm, ref).p_value
  relu4, none4 = {0: 2.1, 1: 2.3}, {0: 1.8, 1: 2.0}
  family = [p({0: 1.7, 1: 1.8}, {0: 1.6, 1: 1.7}), p(relu4, none4),
            p({0: 1.65, 1: 1.75}, none4), p({0: 1.65, 1: 1.75}, relu4)]
  assert row[header.index('Holm p')] == f'{statistics.holm(family)[3]:.3f}'
  assert _row(first, residual)[header.index('Holm p')] == f'{statistics.holm(family)[2]:.3f}'
  text = open(report.write_family([str(tmp_path)], str(tmp_path / 'family'))).read()
  assert 'all 4 comparisons (test split) of the 1 reports below' in text
  section = text.split(': against between=relu with the same num_layers (')[1]
  assert _row(section, residual)[header.index('Holm p')] == f'{statistics.holm(family)[3]:.3f}'


def test_report_pairs_every_setting_against_one_reference_setting(tmp_path):
  """compare={'setting': ...}: one group, every setting against the one with those values (as
  Greff's variants against vanilla)."""
  make_sweep(str(tmp_path))
  path = os.path.join(str(tmp_path), 'sweep.json')
  description = json.load(open(path))
  description['compare'] = {'setting': {'model.between': 'none', 'model.num_layers': 2,
                                        'model.residual': False}}
  _write(path, description)
  text = open(report.write_report(str(tmp_path))).read()
  assert '## Paired differences from between=none, num_layers=2 (test)' in text
  relu4 = _row(text, '| all | between=relu, num_layers=4 |')
  assert relu4[2:6] == ['2', '1', '0/2', '+0.550']  # (2.1 - 1.6 + 2.3 - 1.7) / 2 on test


# ----------------------------------------------------------------------------------------------
# Family-wide corrections, the robust statistics, parameter counts, outliers in plots


def test_benjamini_hochberg_is_scipys_false_discovery_control_and_skips_nan():
  p = [0.01, 0.04, math.nan, 0.03, 0.005, 0.5, 0.2]
  got = statistics.benjamini_hochberg(p)
  finite = [x for x in p if not math.isnan(x)]
  expected = iter(scipy.stats.false_discovery_control(finite, method='bh'))
  for g, x in zip(got, p):
    assert math.isnan(g) if math.isnan(x) else g == pytest.approx(next(expected))
  # by hand for four: sorted 0.01, 0.02, 0.03, 0.04 -> x 4/1, 4/2, 4/3, 4/4 = 0.04 each
  assert statistics.benjamini_hochberg([0.04, 0.01, 0.03, 0.02]) == pytest.approx([0.04] * 4)
  assert statistics.benjamini_hochberg([]) == []


def test_wilcoxon_p_is_scipys_signed_rank_test():
  diffs = [0.12, -0.03, 0.2, 0.05, 0.31, 0.08]
  assert statistics.wilcoxon_p(diffs) == pytest.approx(scipy.stats.wilcoxon(diffs).pvalue)
  # five pairs all on one side: the exact two-sided p is 2 / 2^5, whatever one outlier does
  d = statistics.paired_difference({s: 1.0 + 0.01 * s for s in range(5)},
                                   {s: 1.5 + (200 if s == 3 else 0) for s in range(5)})
  assert d.wilcoxon_p == pytest.approx(0.0625)
  assert d.p_value > 0.3  # the t test is lost in the outlier's variance
  assert statistics.wilcoxon_p([0.0, 0.0, 0.0]) == 1.0
  assert math.isnan(statistics.wilcoxon_p([0.1]))


def test_bootstrap_median_interval_is_seeded_and_robust_to_an_outlier():
  diffs = [-0.11, -0.12, -0.10, -0.13, -0.09, -0.14, 4.5]  # one seed's run blew up in the arm
  low, high = statistics.bootstrap_median_ci(diffs)
  again = statistics.bootstrap_median_ci(diffs)
  assert (low, high) == again  # seeded: a regenerated report gives the same interval
  expected = scipy.stats.bootstrap((np.asarray(diffs),), np.median, n_resamples=10_000,
                                   method='percentile', rng=np.random.default_rng(0))
  assert (low, high) == (pytest.approx(expected.confidence_interval.low),
                         pytest.approx(expected.confidence_interval.high))
  assert low <= np.median(diffs) <= high and high < 4.5
  d = statistics.paired_difference(dict(enumerate(diffs)), dict.fromkeys(range(7), 0.0))
  assert d.median == pytest.approx(-0.11) and d.median_ci == (low, high)
  assert d.stats.ci_high > 2  # where the t interval spans the blow-up
  # with 5 pairs a resample holds the blown-up seed 3 times or more in 5.8% of draws, so the
  # interval reaches it: the median itself stays put
  five = diffs[:4] + [4.5]
  assert statistics.bootstrap_median_ci(five)[1] == 4.5 and np.median(five) == pytest.approx(-0.11)
  assert statistics.bootstrap_median_ci([0.2, 0.2, 0.2]) == (0.2, 0.2)
  assert all(math.isnan(x) for x in statistics.bootstrap_median_ci([0.2]))


def _compare(sweep_dir):
  path = os.path.join(sweep_dir, 'sweep.json')
  description = json.load(open(path))
  description['compare'] = {'field': 'model.between', 'reference': 'none'}
  _write(path, description)


def test_report_gives_the_robust_statistics_the_family_adjustments_and_parameter_counts(tmp_path):
  make_sweep(str(tmp_path))
  _compare(str(tmp_path))
  text = open(report.write_report(str(tmp_path))).read()
  header = _row(text, '| group | arm |')
  four, two = _row(text, '| num_layers=4 | relu |'), _row(text, '| num_layers=2 | relu |')
  col = {name: header.index(name) for name in header}
  # test: relu - none at 4 layers over seeds 0, 1: +0.3 twice; at 2 layers +0.1 twice
  p4, p2 = (statistics.paired_difference({0: 2.1, 1: 2.3}, {0: 1.8, 1: 2.0}).p_value,
            statistics.paired_difference({0: 1.7, 1: 1.8}, {0: 1.6, 1: 1.7}).p_value)
  assert four[col['Holm p']] == f'{statistics.holm([p2, p4])[1]:.3f}'
  assert four[col['BH p']] == \
      f'{scipy.stats.false_discovery_control([p2, p4], method="bh")[1]:.3f}'
  assert four[col['Wilcoxon p']] == f'{scipy.stats.wilcoxon([0.3, 0.3]).pvalue:.3f}'
  assert four[col['median difference [bootstrap 95%]']] == '+0.300 [+0.300, +0.300]'
  assert four[col['params arm / reference']] == '4k / 4k'
  assert two[col['params arm / reference']] == '2k / 2k'
  assert 'adjusted for all 2 comparisons of this report as one family' in text


def test_family_report_adjusts_over_several_reports_together(tmp_path):
  dirs = [str(tmp_path / 'a'), str(tmp_path / 'b')]
  for d in dirs:
    os.makedirs(d)
    make_sweep(d)
    _compare(d)
  path = report.write_family(dirs, str(tmp_path / 'family'))
  text = open(path).read()
  assert 'all 4 comparisons (test split) of the 2 reports below' in text
  _, glance, *sections = text.split('\n## ')
  rows = [line for part in sections for line in part.splitlines()
          if line.startswith('| num_layers=4 | relu |')]
  assert len(rows) == 2
  p = statistics.paired_difference({0: 2.1, 1: 2.3}, {0: 1.8, 1: 2.0}).p_value
  p2 = statistics.paired_difference({0: 1.7, 1: 1.8}, {0: 1.6, 1: 1.7}).p_value
  holm = statistics.holm([p2, p, p2, p])
  header = _row(sections[0], '| group | arm |')
  cells = [c.strip() for c in rows[0].strip('|').split('|')]
  assert cells[header.index('Holm p')] == f'{holm[1]:.3f}'
  own = _row(open(report.write_report(dirs[0])).read(), '| num_layers=4 | relu |')
  assert own[header.index('Holm p')] == f'{statistics.holm([p2, p])[1]:.3f}'
  # at a glance: a row per arm, a column per report (named by its folder where the configs are
  # the same), the detailed rows' interval in each, bold where the family's Holm p is under 0.05
  assert _row(glance, '| group | arm |')[2:] == [f'{d} (bits per character)' for d in dirs]
  for group, arm_seeds, ref_seeds, holm_p in [('num_layers=2', {0: 1.7, 1: 1.8}, {0: 1.6, 1: 1.7},
                                               holm[0]),
                                              ('num_layers=4', {0: 2.1, 1: 2.3}, {0: 1.8, 1: 2.0},
                                               holm[1])]:
    st = statistics.paired_difference(arm_seeds, ref_seeds).stats
    cell = f'{st.mean:+.3f} [{st.ci_low:+.3f}, {st.ci_high:+.3f}]'
    cell = f'**{cell}**' if holm_p < 0.05 else cell
    assert _row(glance, f'| {group} | relu |')[2:] == [cell, cell]
    detailed = _row(sections[0], f'| {group} | relu |')
    assert detailed[header.index('mean difference')] + ' ' + detailed[header.index('95% CI')] \
        == cell.strip('*')
  with pytest.raises(ValueError, match='no paired comparisons'):
    os.remove(os.path.join(dirs[1], 'sweep.json'))
    report.write_family(dirs, str(tmp_path / 'family'))


def test_glance_tables_put_each_arm_in_a_row_and_each_report_in_a_column():
  """Bold exactly where the family's Holm p is under 0.05; '-' for a report without the
  comparison or with fewer than 2 pairs; the group's fields left out of the arm's name."""
  bpc = statistics.Metric('bpc', 'bits per character', 'bpc', False, digits=3)
  error = statistics.Metric('error', 'label error rate (%)', 'error', False, digits=2)
  row = lambda group, arm, arm_seeds, ref_seeds: {
      'group': group, 'value': arm, 'reference_name': 'plain',
      'difference': statistics.paired_difference(arm_seeds, ref_seeds)}
  noisy = row('num_layers=4', 'block=residual, num_layers=4', {0: 1.5, 1: 1.7, 2: 1.2},
              {0: 1.6, 1: 1.6, 2: 1.6})
  rows = [noisy, row('num_layers=4', 'between=relu, num_layers=4', {0: 1.0}, {0: 2.0}),
          row('num_layers=4', 'block=residual, num_layers=4', {0: 5.0, 1: 6.0, 2: 7.0},
              {0: 1.0, 1: 3.0, 2: 2.0})]
  lines = report.glance_tables([('ptb', bpc, 0, 2), ('speech', error, 2, 3)], rows,
                               {'Holm': [0.2, 0.01, 0.04], 'BH': [0.2, 0.01, 0.04]})
  text = '\n'.join(lines)
  assert lines[0] == '### Against plain'
  assert _row(text, '| group |') == ['group', 'arm', 'ptb (bits per character)',
                                     'speech (label error rate (%))']
  st = noisy['difference'].stats
  assert _row(text, '| num_layers=4 | block=residual |') == [
      'num_layers=4', 'block=residual', f'{st.mean:+.3f} [{st.ci_low:+.3f}, {st.ci_high:+.3f}]',
      '**+4.00 [{:+.2f}, {:+.2f}]**'.format(*(4 + np.array([-1, 1]) * scipy.stats.t.ppf(0.975, 2)
                                                / np.sqrt(3)))]  # differences 4, 3, 5: sd 1
  assert _row(text, '| num_layers=4 | between=relu |')[2:] == ['-', '-']


def test_parameter_count_from_the_config_when_no_run_wrote_one(tmp_path):
  """A setting whose runs all diverged before writing num_params: counted from config.json."""
  from tests.trainer_utils import tiny_config
  from train import trainer
  config = tiny_config('ptb_char', **{'model.num_layers': 2})
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'config.json').write_text(config.to_json())
  state, _ = trainer.initial_state(trainer.setup(config))
  expected = sum(x.size for x in jax_leaves(state.params))
  assert analysis.count_params(str(workdir)) == expected
  assert analysis.count_params(str(tmp_path / 'missing')) is None
  assert analysis.format_params(expected) == f'{expected:,}'
  assert analysis.format_params(1_234_567, short=True) == '1.23M'


def jax_leaves(tree):
  import jax
  return jax.tree.leaves(tree)


def test_robust_limits_leave_clean_data_alone_and_cut_an_outlier():
  values = [1.52, 1.55, 1.58, 1.61, 1.64, 1.66]
  assert plots.robust_limits(values) is None
  low, high = plots.robust_limits(values + [200.0])
  assert low < 1.52 and 1.66 < high < 2.0
  # two far values of eight widen the quartiles: 4.34 is kept on the axis, 200 is not
  low, high = plots.robust_limits(values + [4.34, 200.0])
  assert 4.34 < high < 5


def test_a_plot_with_a_blown_up_run_cuts_its_axis_and_marks_the_run():
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots()
  ok = [1.50, 1.52, 1.55]
  blown = [1.60, 1.62, 200.0]
  shown = [(0, statistics.stats(ok), ok, 'C0'), (1, statistics.stats(blown), blown, 'C1')]
  for x, st, _, _ in shown:
    ax.errorbar([x], [st.mean], yerr=[st.half_width])
  bpc = statistics.pick_metric({'bpc': 1.0})
  assert plots._cut_points(ax, 'y', shown, bpc)
  low, high = ax.get_ylim()
  assert high < 2.0 and low < 1.5
  notes = [t.get_text() for t in ax.texts]
  assert any('mean 67.740; 1/3 runs beyond' in t for t in notes), notes
  plt.close(fig)
  fig, ax = plt.subplots()
  assert not plots._cut_points(ax, 'y', shown[:1], bpc)
  plt.close(fig)
