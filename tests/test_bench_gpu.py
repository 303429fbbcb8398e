"""bench/gpu_check.sh in its CPU form (JAX_PLATFORMS=cpu, tiny sizes), so that the GPU check is not
broken where no GPU is at hand; bench_lstm.py's per-CPU results folder and its cell
options part in its quick form.

No timing is asserted: only that the script exits 0, says what it skipped, and writes its tables
with the expected rows.
"""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # the benchmarks' CPU forms as processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMPLS = ['project', 'project-ref', 'flax', 'pytorch', 'jax-cudnn']
CASES = ['train, 2 layers, H=16, B=4, T=8', 'forward, 2 layers, H=16, B=4, T=8']


@pytest.fixture(scope='module')
def cpu_form(tmp_path_factory):
  pytest.importorskip('torch')
  out = tmp_path_factory.mktemp('gpu_check')
  env = dict(os.environ, JAX_PLATFORMS='cpu', OUT=str(out), PYTHON=sys.executable)
  proc = subprocess.run(['bash', os.path.join(ROOT, 'bench', 'gpu_check.sh')], env=env,
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  return proc, out


def test_cpu_form_exits_0_and_says_what_it_skipped(cpu_form):
  proc, out = cpu_form
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  assert "SKIPPED: jax.experimental.rnn's cuDNN path and torch on cuda" in proc.stdout
  assert sorted(os.listdir(out)) == ['gpu_check.json', 'gpu_check.md', 'log.txt', 'pytest.log',
                                     'pytest_junit.xml']


def test_cpu_form_writes_the_tables(cpu_form):
  proc, out = cpu_form
  with open(out / 'gpu_check.json') as f:
    result = json.load(f)
  assert result['on_gpu'] is False and result['tiny'] is True and result['exit_status'] == 0
  tests = result['tests']
  assert tests['ok'] and tests['counts']['passed'] >= 1 and not tests['failed']
  check = {r['impl']: r for r in result['cross_check']['rows']}
  assert set(check) == {'project', 'project-ref', 'lstm_ref', 'jax-cudnn'}
  assert all(check[n]['ok'] for n in ('project', 'project-ref', 'lstm_ref'))
  assert check['jax-cudnn']['skipped'].startswith('needs CUDA')
  assert [c['case']['name'] for c in result['cases']] == CASES and not result['not_run']
  for case in result['cases']:
    rows = {r['impl']: r for r in case['rows']}
    assert list(rows) == IMPLS
    assert rows['jax-cudnn']['status'].startswith('skipped: needs CUDA')
    for name in IMPLS[:-1]:
      assert rows[name]['status'] == 'ok' and rows[name]['median_ms'] > 0, rows[name]
    assert rows['pytorch']['ratio_to_pytorch'] == 1.0
  md = (out / 'gpu_check.md').read_text()
  assert '### GPU check, CPU form' in md and '**passed**' in md
  for name in CASES:
    for impl in IMPLS:
      assert f'| {name} | fp32 | {impl} |' in md
  for impl in ('project', 'project-ref', 'lstm_ref'):
    assert f'| {impl} |' in md


def _bench_lstm():
  sys.path.insert(0, os.path.join(ROOT, 'bench'))
  try:
    import bench_lstm
  finally:
    sys.path.remove(os.path.join(ROOT, 'bench'))
  return bench_lstm


def test_bench_results_are_kept_per_cpu_kind():
  bench_lstm = _bench_lstm()
  assert bench_lstm.cpu_slug('AMD EPYC') == 'amd-epyc'
  assert bench_lstm.cpu_slug('Intel(R) Xeon(R) Platinum 8480C CPU @ 2.00GHz') == \
      'intel-xeon-platinum-8480c'
  assert bench_lstm.cpu_slug('AMD EPYC 7B13 64-Core Processor') == 'amd-epyc-7b13'
  assert bench_lstm.default_out(False) == os.path.join(
      ROOT, 'bench', 'results', bench_lstm.cpu_slug(bench_lstm.cpu_model()))
  quick = bench_lstm.default_out(True)  # --quick without --out: a new temporary folder
  assert os.path.isdir(quick) and not quick.startswith(os.path.join(ROOT, 'bench'))
  os.rmdir(quick)
  assert os.path.exists(os.path.join(ROOT, 'bench', 'results', 'amd-epyc', 'bench_speed.json'))
  assert bench_lstm.cpu_slug('AMD EPYC (family 26 model 2)') == 'amd-epyc-family-26-model-2'


def test_options_part_times_each_option_on_the_path_it_takes(tmp_path):
  pytest.importorskip('torch')
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'bench', 'bench_lstm.py'), '--part',
                         'options', '--quick', '--reps', '1', '--out', str(tmp_path)],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  with open(tmp_path / 'bench_options.json') as f:
    rows = {r['option']: r for r in json.load(f)['rows']}
  assert {k: r['path'] for k, r in rows.items()} == {
      'canonical': 'fast', 'recurrent_dropout=0.25': 'fast', 'weight_drop=0.5': 'fast',
      'canonical, reference path': 'reference'}
  assert rows['canonical']['ratio_to_canonical'] == 1.0
  assert all(r['median_ms'] > 0 for r in rows.values())
  assert '| canonical, reference path | reference |' in (tmp_path / 'bench_options.md').read_text()
