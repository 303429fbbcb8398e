"""train.sweep: grid expansion, names and overrides, resume, parallel runs, the printed commands and
the SLURM script. Nothing trains: the runner is a fake that writes results.json."""
import inspect
import json
import math
import os
import re
import subprocess
import sys
import threading
import time

import pytest
from absl import flags
from ml_collections import config_flags

from train import files, report, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG_FILE = '''"""A sweep config for the tests.

  python -m train.sweep --config={path} --sweep_dir=/tmp/sweep
"""
import sys
sys.path.insert(0, {root!r})
from configs import common


def get_config(arg=None):
  c = common.base_config()
  c.dataset = 'ptb_char'
  c.model.hidden_size = 16
  c.num_train_steps = 20
  c.data.max_train_tokens = 5000
  return c


def get_sweep(arg=None):
  if arg == 'tune':
    return {{'axes': {{'model.between': ['none', 'relu'], 'model.num_layers': [2, 4]}},
            'seeds': [0, 1, 2], 'tune': {{'optimizer.learning_rate': [0.001, 0.01, 0.1]}},
            'compare': {{'field': 'model.between', 'reference': 'none'}}}}
  if arg in ('extend', 'extend_once'):  # a grid that grows where a setting chose its edge
    extend = ({{'below': [0.0001], 'above': [0.1, 1.0]}} if arg == 'extend'
              else {{'above': [0.03]}})
    return {{'axes': {{'model.between': ['none', 'relu'], 'model.num_layers': [2]}},
            'seeds': [0, 1], 'tune': {{'optimizer.learning_rate': [0.001, 0.01]}},
            'extend': extend}}
  if arg == 'fresh':  # tuned on two seeds of its own, evaluated on three others
    return {{'axes': {{'model.between': ['none', 'relu'], 'model.num_layers': [2]}},
            'seeds': [0, 1, 2], 'tune_seeds': [10, 11],
            'tune': {{'optimizer.learning_rate': [0.001, 0.01, 0.1]}},
            'compare': {{'field': 'model.between', 'reference': 'none'}}}}
  seeds = [0, 1] if arg != 'one_seed' else [7]
  return {{'axes': {{'model.between': ['none', 'relu', 'layernorm'], 'model.num_layers': [2, 4]}},
          'seeds': seeds,
          'extra': [{{'model.num_layers': 4, 'model.block': 'residual'}},
                    {{'model.between': 'relu', 'model.num_layers': 2}}]}}  # a grid point: dropped
'''

GRID_NAMES = ['between=none,num_layers=2', 'between=none,num_layers=4', 'between=relu,num_layers=2',
              'between=relu,num_layers=4', 'between=layernorm,num_layers=2',
              'between=layernorm,num_layers=4', 'num_layers=4,block=residual']


@pytest.fixture
def config_path(tmp_path):
  path = tmp_path / 'sweep_config.py'
  path.write_text(CONFIG_FILE.format(path=path, root=ROOT))
  return str(path)


def _points(config_path, arg=None):
  spec = config_path + (f':{arg}' if arg else '')
  module_sweep = sweep.load_grid(spec)
  from importlib import util
  s = util.spec_from_file_location('cfg', config_path)
  module = util.module_from_spec(s)
  s.loader.exec_module(module)
  base = module.get_config(arg)
  return base, module_sweep, sweep.expand(base, module_sweep)


def test_expand_counts_names_and_overrides(config_path):
  base, spec, points = _points(config_path)
  # 3 x 2 grid + 2 extras, one of which is a grid point, times 2 seeds; seeds outermost.
  assert len(points) == (6 + 1) * 2
  assert [p.name for p in points] == ([f'{n},seed=0' for n in GRID_NAMES]
                                      + [f'{n},seed=1' for n in GRID_NAMES])
  by_name = {p.name: p for p in points}
  p = by_name['between=relu,num_layers=4,seed=1']
  assert p.overrides == {'model.between': 'relu', 'model.num_layers': 4, 'seed': 1}
  assert (p.config.model.between, p.config.model.num_layers, p.config.seed) == ('relu', 4, 1)
  assert p.values == {'model.between': 'relu', 'model.num_layers': 4, 'model.block': 'plain'}
  assert p.config.model.hidden_size == 16 and p.config.is_locked
  extra = by_name['num_layers=4,block=residual,seed=0']
  assert extra.overrides == {'model.num_layers': 4, 'model.block': 'residual', 'seed': 0}
  assert extra.values == {'model.between': 'none', 'model.num_layers': 4, 'model.block': 'residual'}
  assert extra.config.model.block == 'residual'
  # The base config is untouched.
  assert (base.model.between, base.model.num_layers, base.seed, base.model.block) == \
      ('none', 2, 0, 'plain')
  # The config argument reaches get_sweep.
  assert {p.seed for p in _points(config_path, 'one_seed')[2]} == {7}


def test_expand_without_seeds_uses_the_config_seed(config_path):
  base, _, _ = _points(config_path)
  points = sweep.expand(base, {'axes': {'optimizer.learning_rate': [0.1, 0.01]}})
  assert [p.name for p in points] == ['learning_rate=0.1,seed=0', 'learning_rate=0.01,seed=0']
  assert points[1].config.optimizer.learning_rate == 0.01


@pytest.mark.parametrize('bad, message', [
    ({'axes': {'model.betwen': ['none']}}, "'model.betwen' is not a field"),
    ({'axes': {'model.num_layers': ['four']}}, "cannot be set to 'four'"),
    ({'axes': {'seed': [0, 1]}}, 'give seeds'),
    ({'axes': {'model.between': []}}, 'non-empty list'),
    ({'axes': {'model.between': ['relu', 'relu']}}, 'repeats a value'),
    ({'axes': {'model.hidden_size': [None]}}, 'cannot be set to None'),
    ({'grid': {}}, "keys ['grid'] are not known"),
    ({'seeds': [0, 0]}, 'distinct integers'),
    ({'extra': [{'seed': 3}]}, 'without seed'),
    ({'axes': {'model.between': ['none', 'relu']},
      'compare': {'setting': {'model.between': 'none'}, 'by': ['model.between']}},
     "with an optional 'by'"),
    ({'axes': {'model.between': ['none', 'relu']},
      'compare': {'setting': {'model.between': 'none'}, 'by': 'model.num_layers'}},
     "with an optional 'by'"),
    ({'axes': {'model.between': ['none', 'relu']},
      'compare': [{'setting': {'model.between': 'none'}},
                  {'setting': {'model.between': 'relu'}, 'arms': {'model.num_layers': 2}}]},
     "or a list of those; got {'setting': {'model.between': 'relu'}, 'arms'"),
    ({'axes': {'model.between': ['none', 'relu']}, 'compare': [{'field': 'model.between'}]},
     "or a list of those; got {'field': 'model.between'}"),
])
def test_expand_errors(config_path, bad, message):
  base, _, _ = _points(config_path)
  with pytest.raises(sweep.SweepError, match=message.replace('[', r'\[').replace(']', r'\]')):
    sweep.expand(base, bad)


def test_a_grid_of_old_field_names_sets_todays_fields(config_path):
  """A grid written before the renames (an axis over num_steps, an extra point with task and
  optimizer.loss_reduction, the data sizes of a dataset that read them): its points keep their
  names, and their configs and commands set today's fields."""
  base, _, _ = _points(config_path)
  points = sweep.expand(base, {
      'axes': {'num_steps': [16, 32]},
      'extra': [{'task': 'copy', 'optimizer.loss_reduction': 'sequence', 'data.num_train': 77}]})
  assert [p.name for p in points] == [
      'num_steps=16,seed=0', 'num_steps=32,seed=0',
      'task=copy,loss_reduction=sequence,num_train=77,seed=0']
  assert [p.config.bptt_length for p in points] == [16, 32, 64]
  extra = points[-1]
  assert (extra.config.dataset, extra.config.loss_reduction, extra.config.data.copy.num_train) == \
      ('copy', 'sequence', 77)
  assert extra.values == {'num_steps': 64, 'task': 'copy', 'optimizer.loss_reduction': 'sequence',
                          'data.num_train': 77}
  assert sweep.point_command(extra, 'c.py', 'w', base=base)[4:] == [
      '--config.dataset=copy', '--config.loss_reduction=sequence',
      '--config.data.copy.num_train=77', '--config.seed=0']


def test_short_names_keep_the_full_field_when_ambiguous():
  assert sweep._short_names(['model.dropout', 'data.dropout', 'model.between']) == {
      'model.dropout': 'model.dropout', 'data.dropout': 'data.dropout', 'model.between': 'between'}


@pytest.mark.filterwarnings('ignore:the load_module:DeprecationWarning')  # ml_collections
def test_commands_reproduce_each_point_config(config_path):
  base, _, points = _points(config_path)
  forwarded = {'num_train_steps': 7}
  for point in points[:7]:
    cmd = sweep.point_command(point, config_path, f'/runs/{point.name}', forwarded=forwarded,
                              base=base)
    assert cmd[:4] == ['python', 'main.py', f'--config={config_path}',
                       f'--workdir=/runs/{point.name}']
    assert cmd[4] == '--config.num_train_steps=7' and cmd[-1] == f'--config.seed={point.seed}'
    # main.py's own flag parsing turns the command into the point's config.
    values = flags.FlagValues()
    config_flags.DEFINE_config_file('config', None, '', flag_values=values, lock_config=True,
                                    sys_argv=cmd[1:])
    flags.DEFINE_string('workdir', None, '', flag_values=values)
    values(cmd[1:])
    expected = point.config.to_dict()
    expected['num_train_steps'] = 7
    assert values.config.to_dict() == expected
  # A None that the config already holds needs no flag; any other None cannot be given.
  point = sweep.Point('x', {'model.cell_clip': None, 'seed': 0}, {}, 0)
  assert sweep.point_command(point, 'c.py', 'w', base=base)[4:] == ['--config.seed=0']


def _write_results(workdir, status, **extra):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump({'status': status, 'dataset': 'ptb_char', **extra}, f)


class FakeRunner:
  """Records what it runs and writes a completed results.json (or what `outcome` says)."""

  def __init__(self, outcome=None, delay=0.0):
    self.calls, self.outcome, self.delay = [], outcome or {}, delay
    self.lock = threading.Lock()
    self.running = self.max_running = 0

  def __call__(self, argv, workdir):
    name = os.path.basename(workdir)
    with self.lock:
      self.calls.append(name)
      self.running += 1
      self.max_running = max(self.max_running, self.running)
    time.sleep(self.delay)
    outcome = self.outcome.get(name, 'completed')
    with self.lock:
      self.running -= 1
    if outcome == 'crash':
      return 1
    if outcome == 'raise':
      raise OSError('no such interpreter')
    if outcome == 'refused':  # main.py stops at once (e.g. a config conflict); an old results.json
      _write_results(workdir, 'preempted')
      return 1
    _write_results(workdir, outcome, valid={'loss': 1.0, 'bpc': 1.4427}, test={'loss': 1.0,
                                                                                'bpc': 1.4427})
    return 1 if outcome == 'diverged' else 0  # as main.py


def test_resume_skips_finished_points_and_reruns_the_others(config_path, tmp_path):
  _, _, points = _points(config_path)
  sweep_dir = str(tmp_path / 'sweep')
  names = [p.name for p in points]
  _write_results(os.path.join(sweep_dir, names[0]), 'completed')
  _write_results(os.path.join(sweep_dir, names[1]), 'diverged', message='nan at step 3')
  _write_results(os.path.join(sweep_dir, names[2]), 'preempted', step=10)
  _write_results(os.path.join(sweep_dir, names[3]), 'running')  # killed mid-run
  os.makedirs(os.path.join(sweep_dir, names[4], 'checkpoints'))  # killed before any results
  commands = {n: ['true'] for n in names}
  runner = FakeRunner()
  lines = []
  statuses = sweep.run_points(sweep_dir, points, commands, runner=runner, log=lines.append)
  assert runner.calls == names[2:]
  assert statuses[names[0]] == 'completed' and statuses[names[1]] == 'diverged'
  assert all(statuses[n] == 'completed' for n in names[2:])
  assert lines[0] == f'{len(names)} points in {sweep_dir}: 2 finished, {len(names) - 2} to run'
  assert any(f'start {names[4]} (resuming)' in line for line in lines)
  assert any(f'completed {names[2]} | valid bpc 1.443 | test bpc 1.443' in line
             for line in lines)
  # Restarted once more: everything is finished, nothing runs.
  again = FakeRunner()
  sweep.run_points(sweep_dir, points, commands, runner=again, log=lambda line: None)
  assert again.calls == []


def test_parallel_runs_each_point_once_and_failures_do_not_stop_the_sweep(config_path, tmp_path):
  _, _, points = _points(config_path)
  names = [p.name for p in points]
  runner = FakeRunner(outcome={names[0]: 'crash', names[1]: 'raise', names[2]: 'diverged',
                               names[3]: 'refused'}, delay=0.05)
  lines = []
  statuses = sweep.run_points(str(tmp_path), points, {n: ['true'] for n in names}, parallel=3,
                              runner=runner, log=lines.append)
  assert sorted(runner.calls) == sorted(names) and runner.max_running == 3
  assert [statuses[n] for n in names[:4]] == ['failed', 'failed', 'diverged', 'failed']
  assert any('failed' in line and 'exit code 1' in line for line in lines)
  assert lines[-1] == f'sweep: {len(names) - 4} completed, 1 diverged, 3 failed'


def _cli(*args, cwd=ROOT):
  return subprocess.run([sys.executable, '-m', 'train.sweep', *args], cwd=cwd, text=True,
                        capture_output=True, env=dict(os.environ, JAX_PLATFORMS='cpu',
                                                      PYTHONPATH=ROOT), timeout=120)


def test_print_commands_and_dry_run(config_path, tmp_path):
  sweep_dir = str(tmp_path / 'sweep')
  _write_results(os.path.join(sweep_dir, 'between=none,num_layers=2,seed=0'), 'completed')
  dry = _cli(f'--config={config_path}', f'--sweep_dir={sweep_dir}', '--dry_run')
  assert dry.returncode == 0, dry.stderr
  assert dry.stdout.startswith(f'14 points in {sweep_dir}: 1 finished, 13 to run')
  assert 'skip between=none,num_layers=2,seed=0 [completed]' in dry.stdout
  assert not os.path.exists(os.path.join(sweep_dir, 'sweep.json'))

  out = _cli(f'--config={config_path}', f'--sweep_dir={sweep_dir}', '--print_commands',
             '--config.num_train_steps=5')
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert len(lines) == 13  # the finished point is left out
  assert lines[0] == (f'python main.py --config={config_path} '
                      f'--workdir={sweep_dir}/between=none,num_layers=4,seed=0 '
                      '--config.num_train_steps=5 --config.model.between=none '
                      '--config.model.num_layers=4 --config.seed=0')
  assert lines[-1].endswith('--config.model.block=residual --config.seed=1')
  with open(os.path.join(sweep_dir, 'sweep.json')) as f:
    description = json.load(f)
  assert description['num_points'] == 14 and len(description['points']) == 14
  assert description['fields'] == ['model.between', 'model.num_layers', 'model.block']
  assert description['forwarded_overrides'] == {'num_train_steps': '5'}
  assert description['points'][0]['values'] == {'model.between': 'none', 'model.num_layers': 2,
                                                 'model.block': 'plain'}


def test_forwarded_overrides_may_not_name_a_swept_field(config_path, tmp_path):
  base, _, _ = _points(config_path)
  with pytest.raises(sweep.SweepError, match='--config.model.num_layers is swept'):
    sweep.prepare(base, config_path, str(tmp_path), {'model.num_layers': 3}, 'python', 'main.py')
  with pytest.raises(sweep.SweepError, match='--config.seed is swept'):
    sweep.prepare(base, config_path, str(tmp_path), {'seed': 3}, 'python', 'main.py')


def test_slurm_script(config_path, tmp_path):
  sweep_dir = str(tmp_path / 'sweep')
  _write_results(os.path.join(sweep_dir, 'between=none,num_layers=2,seed=0'), 'diverged')
  script = str(tmp_path / 'job.sh')
  out = _cli(f'--config={config_path}', f'--sweep_dir={sweep_dir}', f'--slurm={script}',
             '--parallel=4', '--sbatch=--time=01:00:00')
  assert out.returncode == 0, out.stderr
  text = open(script).read()
  assert text.startswith('#!/bin/bash\n')
  assert '#SBATCH --array=0-12%4\n' in text  # 13 unfinished points, at most 4 at once
  assert '#SBATCH --time=01:00:00\n' in text and '#SBATCH --requeue\n' in text
  assert '#SBATCH --open-mode=append\n' in text and '#SBATCH --signal=TERM@120\n' in text
  assert f'#SBATCH --output={sweep_dir}/slurm-%A_%a.out' in text
  assert f'cd {ROOT}\n' in text and 'export JAX_COMPILATION_CACHE_DIR=' in text
  name = 'between=none,num_layers=4,seed=0'
  assert f"names=(\n  {name}\n" in text  # the first task's point
  assert 'between=none,num_layers=2,seed=0' not in text  # finished: left out
  command = text.split(f'  {name})\n', 1)[1].splitlines()[1]
  assert command.startswith(f'    command=({sys.executable} {os.path.join(ROOT, "main.py")} '
                            f'--config={config_path} ')
  assert f'--workdir={sweep_dir}/{name} ' in command
  assert subprocess.run(['bash', '-n', script]).returncode == 0


def _fake_srun(tmp_path):
  """A directory for PATH whose `srun` runs its arguments (the script's tasks outside SLURM)."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (bin_dir / 'srun').write_text('#!/bin/sh\nexec "$@"\n')
  (bin_dir / 'srun').chmod(0o755)
  return str(bin_dir)


def _run_task(script, task, bin_dir, env=None):
  env = dict(os.environ, SLURM_ARRAY_TASK_ID=str(task), SLURM_JOB_ID='7',
             PATH=bin_dir + os.pathsep + os.environ['PATH'], **(env or {}))
  return subprocess.run(['bash', str(script)], env=env, capture_output=True, text=True)


def test_slurm_tasks_run_their_point_by_name(tmp_path):
  """Task i runs the point named i-th in the script it was submitted with; writing the script
  again for fewer points (one finished) changes nothing for tasks of the earlier script."""
  def commands(names):
    return {n: ['bash', '-c', 'echo "$0" >> "${1#--workdir=}/ran"', n,
                f'--workdir={tmp_path / n}'] for n in names}
  for n in 'abc':
    (tmp_path / n).mkdir()
  first, second = tmp_path / 'first.sh', tmp_path / 'second.sh'
  sweep.write_slurm(str(first), commands('abc'), 'x', str(tmp_path))
  files.write_json(str(tmp_path / 'a' / 'results.json'), {'status': 'completed'})
  sweep.write_slurm(str(second), commands('bc'), 'x', str(tmp_path))
  bin_dir = _fake_srun(tmp_path)
  out = _run_task(first, 0, bin_dir)
  assert out.returncode == 0, out.stderr
  assert out.stdout.splitlines()[-1] == 'task 0: point a has finished (completed); nothing to run'
  for script, task, name in ((first, 1, 'b'), (first, 2, 'c'), (second, 0, 'b'), (second, 1, 'c')):
    out = _run_task(script, task, bin_dir)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == f'task {task} (restart 0): point {name}'
  assert not (tmp_path / 'a' / 'ran').exists()
  assert (tmp_path / 'b' / 'ran').read_text() == 'b\nb\n'
  assert (tmp_path / 'c' / 'ran').read_text() == 'c\nc\n'
  assert '#SBATCH --array=0-1\n' in second.read_text()


def test_slurm_task_requeues_a_stopped_run_a_bounded_number_of_times(tmp_path):
  """A run that stops early (results.json `preempted`) requeues its array task with scontrol,
  until the task has been requeued STACKED_LSTM_MAX_REQUEUES times."""
  workdir = tmp_path / 'p'
  workdir.mkdir()
  write = ('import json, sys; json.dump({"status": "preempted"}, '
           'open(sys.argv[1][len("--workdir="):] + "/results.json", "w"))')
  script = tmp_path / 's.sh'
  sweep.write_slurm(str(script), {'p': [sys.executable, '-c', write, f'--workdir={workdir}']},
                    'x', str(tmp_path))
  bin_dir = _fake_srun(tmp_path)
  (tmp_path / 'bin' / 'scontrol').write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/scontrol\n')
  (tmp_path / 'bin' / 'scontrol').chmod(0o755)
  env = dict(SLURM_ARRAY_JOB_ID='6', STACKED_LSTM_MAX_REQUEUES='2')
  out = _run_task(script, 0, bin_dir, dict(env, SLURM_RESTART_COUNT='1'))
  assert out.returncode == 0, out.stderr
  assert (tmp_path / 'scontrol').read_text() == 'requeue 6_0\n'
  assert 'requeueing job 6_0 (restart 2 of at most 2)' in out.stdout
  out = _run_task(script, 0, bin_dir, dict(env, SLURM_RESTART_COUNT='2'))
  assert out.returncode == 1
  assert 'job 6_0 was already requeued 2 times' in out.stderr
  assert (tmp_path / 'scontrol').read_text() == 'requeue 6_0\n'


@pytest.mark.skipif(not os.path.exists('/proc/self/autogroup'),
                    reason="Linux's autogroup scheduling is not in this kernel")
def test_a_niced_sweep_runs_its_points_at_its_niceness(tmp_path):
  """Each point runs in a session of its own; under autogroup scheduling that session would get
  an equal share of the CPU whatever the sweep's nice value, unless its group is niced too."""
  point = ('import os, time; time.sleep(1); '
           'print("process", os.getpriority(os.PRIO_PROCESS, 0)); '
           'print(open("/proc/self/autogroup").read())')
  sweeper = (f'import os, sys; sys.path.insert(0, {ROOT!r}); os.nice(7); from train import sweep; '
             f'sys.exit(sweep.Runner()([sys.executable, "-c", {point!r}], {str(tmp_path)!r}))')
  result = subprocess.run([sys.executable, '-c', sweeper], capture_output=True, text=True,
                          timeout=60)
  assert result.returncode == 0, result.stderr
  log = (tmp_path / 'log.txt').read_text()
  assert 'process 7' in log
  assert re.search(r'/autogroup-\d+ nice 7', log), log


def test_points_run_on_cores_of_their_own(config_path, tmp_path):
  """--parallel=N with --cores_per_point=1: no two points that run at the same time share a CPU
  (N = 2 where this machine has two CPUs to give)."""
  sets = sweep.core_sets(1, min(2, len(os.sched_getaffinity(0))))
  point = ('import os, time; start = time.time(); time.sleep(0.5); '
           'print("cores", sorted(os.sched_getaffinity(0)), start, time.time())')
  _, _, points = _points(config_path)
  points = points[:4]
  sweep_dir = str(tmp_path / 'sweep')
  sweep.run_points(sweep_dir, points, {p.name: [sys.executable, '-c', point] for p in points},
                   parallel=len(sets), runner=sweep.Runner(sets), log=lambda line: None)
  spans = []
  for p in points:
    cores, start, end = re.search(r'cores (\[[\d, ]+\]) ([\d.]+) ([\d.]+)', open(
        os.path.join(sweep_dir, p.name, 'log.txt')).read()).groups()
    spans.append((frozenset(json.loads(cores)), float(start), float(end)))
  assert {cores for cores, _, _ in spans} == set(sets)
  for i, (cores_a, start_a, end_a) in enumerate(spans):
    for cores_b, start_b, end_b in spans[i + 1:]:
      if start_a < end_b and start_b < end_a:  # at the same time
        assert not cores_a & cores_b


def test_more_cores_than_the_sweep_may_use_is_one_line(config_path, tmp_path, monkeypatch):
  monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0, 1, 2, 3})
  assert sweep.core_sets(2, 2) == [frozenset({0, 1}), frozenset({2, 3})]
  with pytest.raises(ValueError, match=r'^--parallel=3 points of --cores_per_point=2 need 6 '
                     r'CPUs, and this sweep may use 4 \(0,1,2,3\); lower one of them$'):
    sweep.core_sets(2, 3)
  result = _cli(f'--config={config_path}', f'--sweep_dir={tmp_path / "s"}', '--parallel=2',
                '--cores_per_point=4096')
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(
      'error: --parallel=2 points of --cores_per_point=4096 need 8192 CPUs, and this sweep may '
      'use'), result.stderr
  assert not os.path.exists(tmp_path / 's')


@pytest.mark.slow  # trains two points as processes
def test_points_run_with_the_persistent_compilation_cache(tmp_path, monkeypatch):
  monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR', raising=False)
  monkeypatch.setenv('STACKED_LSTM_CACHE', str(tmp_path / 'cache'))
  argv = [sys.executable, '-c', 'import os; print(os.environ["JAX_COMPILATION_CACHE_DIR"])']
  assert sweep.Runner()(argv, str(tmp_path / 'a')) == 0
  assert (tmp_path / 'a' / 'log.txt').read_text().splitlines()[-1] == str(tmp_path / 'cache' / 'jax')
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', str(tmp_path / 'mine'))
  assert sweep.Runner()(argv, str(tmp_path / 'b')) == 0
  assert (tmp_path / 'b' / 'log.txt').read_text().splitlines()[-1] == str(tmp_path / 'mine')


# ------------------------------------------------------------------------------------------------
# The tuning stage


def _tuned_bpc(name):
  """A made-up validation metric with a different best rate per setting: relu likes 0.1, none
  0.01 at 2 layers and 0.001 at 4."""
  best = {'between=none,num_layers=2': 0.01, 'between=none,num_layers=4': 0.001,
          'between=relu,num_layers=2': 0.1, 'between=relu,num_layers=4': 0.1}
  setting = ','.join(part for part in name.split(',') if part.split('=')[0] in
                     ('between', 'num_layers'))
  lr = float(dict(part.split('=') for part in name.split(','))['learning_rate'])
  seed = int(name.rsplit('seed=', 1)[1])
  return 1.0 + abs(math.log10(lr) - math.log10(best[setting])) + 0.01 * seed


class TuningRunner(FakeRunner):
  def __call__(self, argv, workdir):
    name = os.path.basename(workdir)
    self.calls.append(name)
    bpc = _tuned_bpc(name)
    _write_results(workdir, 'completed', valid={'bpc': bpc, 'loss': bpc * math.log(2)},
                   test={'bpc': bpc, 'loss': bpc * math.log(2)})
    return 0


def _prepare(config_path, sweep_dir):
  base, _, _ = _points(config_path, 'tune')
  return sweep.prepare(base, config_path + ':tune', sweep_dir, {}, 'python', 'main.py')


def test_tuning_stage_then_seeds_at_each_settings_best_rate(config_path, tmp_path):
  sweep_dir = str(tmp_path / 'sweep')
  spec, points, _ = _prepare(config_path, sweep_dir)
  # Before any run: the tuning stage only, each setting at every rate with the first seed.
  assert len(points) == 4 * 3 and {p.stage for p in points} == {'tune'}
  assert {p.seed for p in points} == {0}
  assert 'between=relu,num_layers=4,learning_rate=0.1,seed=0' in [p.name for p in points]
  assert all(c['pending'] for c in spec['choices'].values())
  runner = TuningRunner()
  sweep.run_points(sweep_dir, points, {p.name: ['true'] for p in points}, runner=runner,
                   log=lambda line: None)
  spec, points, _ = _prepare(config_path, sweep_dir)
  seed_points = [p for p in points if p.stage == 'seeds']
  # Seeds 1 and 2 at each setting's validation-best rate (seed 0 is the tuning run itself).
  chosen = {(p.values['model.between'], p.values['model.num_layers']):
            p.values['optimizer.learning_rate'] for p in seed_points}
  assert chosen == {('none', 2): 0.01, ('none', 4): 0.001, ('relu', 2): 0.1, ('relu', 4): 0.1}
  assert sorted({p.seed for p in seed_points}) == [1, 2] and len(seed_points) == 8
  # The seeds stage reuses the tuning run at the chosen rate as its seed-0 run.
  names = [p.name for p in points]
  assert 'between=none,num_layers=4,learning_rate=0.001,seed=0' in names
  assert all(not c['pending'] for c in spec['choices'].values())


def test_an_interrupted_tuning_stage_resumes(config_path, tmp_path):
  sweep_dir = str(tmp_path / 'sweep')
  _, points, _ = _prepare(config_path, sweep_dir)
  first = [p for p in points if 'between=none,num_layers=2' in p.name]
  sweep.run_points(sweep_dir, points[:5], {p.name: ['true'] for p in points}, runner=TuningRunner(),
                   log=lambda line: None)
  os.makedirs(os.path.join(sweep_dir, points[5].name, 'checkpoints'))  # killed mid-run
  spec, points, _ = _prepare(config_path, sweep_dir)
  # Only the setting whose three tuning runs finished has its seeds; the others wait.
  seed_points = [p for p in points if p.stage == 'seeds']
  assert {p.name.rsplit(',learning_rate', 1)[0] for p in seed_points} == {
      'between=none,num_layers=2'}
  assert len(first) == 3
  runner = TuningRunner()
  sweep.run_points(sweep_dir, points, {p.name: ['true'] for p in points}, runner=runner,
                   log=lambda line: None)
  assert points[5].name in runner.calls and points[0].name not in runner.calls
  _, points, _ = _prepare(config_path, sweep_dir)
  assert len([p for p in points if p.stage == 'seeds']) == 8


class DivergingTuningRunner(TuningRunner):
  """relu at 4 layers diverges at every rate; the rest as TuningRunner."""
  def __call__(self, argv, workdir):
    if 'between=relu,num_layers=4' in os.path.basename(workdir):
      self.calls.append(os.path.basename(workdir))
      _write_results(workdir, 'diverged')
      return 0
    return super().__call__(argv, workdir)


def test_a_setting_that_diverged_at_every_rate_gets_no_seeds_and_the_report_says_so(config_path,
                                                                                   tmp_path):
  sweep_dir = str(tmp_path / 'sweep')
  _, points, _ = _prepare(config_path, sweep_dir)
  runner = DivergingTuningRunner()
  sweep.run_points(sweep_dir, points, {p.name: ['true'] for p in points}, runner=runner,
                   log=lambda line: None)
  spec, points, commands = _prepare(config_path, sweep_dir)
  seed_points = [p for p in points if p.stage == 'seeds']
  assert len(seed_points) == 6
  assert not any('between=relu,num_layers=4' in p.name for p in seed_points)
  sweep.run_points(sweep_dir, points, {p.name: ['true'] for p in points}, runner=runner,
                   log=lambda line: None)
  base, _, _ = _points(config_path, 'tune')
  files.write_json(os.path.join(sweep_dir, 'sweep.json'), sweep.sweep_description(
      config_path + ':tune', spec, points, base, {}, commands), default=repr)
  text = open(report.write_report(sweep_dir)).read()
  assert ('Not in the table: between=relu, num_layers=4 (every tuning run diverged, so no value '
          'was chosen and no seeds ran') in text
  tuning_row = next(line for line in text.splitlines()
                    if line.startswith('| between=relu, num_layers=4 |'))
  assert tuning_row.count('div') == 3
  assert '| relu | 4 |' not in text  # no row in the results by setting


def _cli_with_fake_main(tmp_path, config_spec, sweep_dir):
  """train.sweep's own loop, with main.py replaced by a script that writes results.json with
  _tuned_bpc's metric."""
  fake_main = tmp_path / 'fake_main.py'
  fake_main.write_text('import json, math, os, sys\n' + inspect.getsource(_tuned_bpc) + '''
workdir = [a for a in sys.argv if a.startswith('--workdir=')][0].split('=', 1)[1]
os.makedirs(workdir, exist_ok=True)
bpc = _tuned_bpc(os.path.basename(workdir))
json.dump({'status': 'completed', 'dataset': 'ptb_char', 'valid': {'bpc': bpc},
           'test': {'bpc': bpc}}, open(os.path.join(workdir, 'results.json'), 'w'))
''')
  code = (f'import sys; sys.path.insert(0, {ROOT!r}); from train import sweep; '
          f'sweep.MAIN = {str(fake_main)!r}; sweep._define_flags(); '
          'from absl import app; app.run(lambda argv: sys.exit(sweep.main(argv)))')
  return subprocess.run([sys.executable, '-c', code, f'--config={config_spec}',
                         f'--sweep_dir={sweep_dir}'], capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))


def test_tuning_stage_cli_runs_both_stages_and_the_report_pairs_them(config_path, tmp_path):
  """train.sweep's own loop: the tuning stage, then the seeds its choices make runnable, then
  the report."""
  sweep_dir = str(tmp_path / 'sweep')
  result = _cli_with_fake_main(tmp_path, config_path + ':tune', sweep_dir)
  assert result.returncode == 0, result.stderr
  runs = sorted(d for d in os.listdir(sweep_dir) if os.path.isdir(os.path.join(sweep_dir, d)))
  assert len(runs) == 12 + 8
  path = report.write_report(sweep_dir)
  text = open(path).read()
  assert '## Tuning' in text and '## Paired differences from model.between=none (test)' in text
  # relu minus none at 2 layers, paired by seed: the 0.01 * seed terms cancel exactly
  row = next(line for line in text.splitlines() if line.startswith('| num_layers=2 | relu |'))
  cells = [c.strip() for c in row.strip('|').split('|')]
  assert cells[2:6] == ['3', '0', '0/3', '+0.000']  # ties: better in none of the pairs
  assert os.path.exists(os.path.join(sweep_dir, 'tuning.png'))


def _tuned_values(spec):
  return spec['tune']['optimizer.learning_rate']


def test_a_chosen_edge_grows_the_grid_for_every_setting_before_any_seed(config_path, tmp_path):
  """none is best at 0.01 and relu at 0.1 (_tuned_bpc); the grid starts at [0.001, 0.01] with
  0.1 and then 1.0 to come above it and 0.0001 below."""
  sweep_dir = str(tmp_path / 'sweep')
  base, _, _ = _points(config_path, 'extend')
  prepare = lambda: sweep.prepare(base, config_path + ':extend', sweep_dir, {}, 'python',
                                  'main.py')
  runner = TuningRunner()
  run = lambda points: sweep.run_points(sweep_dir, points, {p.name: ['true'] for p in points},
                                        runner=runner, log=lambda line: None)
  spec, points, _ = prepare()
  assert _tuned_values(spec) == [0.001, 0.01] and {p.stage for p in points} == {'tune'}
  run([p for p in points if 'between=none' in p.name])
  spec, points, _ = prepare()  # none's tuning is done, but no seed runs while relu's is not
  assert {p.stage for p in points} == {'tune'} and len(points) == 4
  run(points)
  spec, points, _ = prepare()  # both chose 0.01, the last value: 0.1 is tuned for both
  assert _tuned_values(spec) == [0.001, 0.01, 0.1] and {p.stage for p in points} == {'tune'}
  assert {p.name for p in points} - set(runner.calls) == {
      'between=none,num_layers=2,learning_rate=0.1,seed=0',
      'between=relu,num_layers=2,learning_rate=0.1,seed=0'}
  run(points)
  spec, points, commands = prepare()  # relu chose 0.1, again the last value: 1.0 joins
  assert _tuned_values(spec) == [0.001, 0.01, 0.1, 1.0] and {p.stage for p in points} == {'tune'}
  files.write_json(os.path.join(sweep_dir, 'sweep.json'), sweep.sweep_description(
      config_path + ':extend', spec, points, base, {}, commands), default=repr)
  assert ('0.1, 1.0 joined it so far (tuning has not finished, so it may still grow).'
          in open(report.write_report(sweep_dir)).read())  # a report made mid-tuning
  run(points)
  spec, points, commands = prepare()  # no setting at an edge: the seeds run at the choices
  assert _tuned_values(spec) == [0.001, 0.01, 0.1, 1.0]
  assert {p.name for p in points if p.stage == 'seeds'} == {
      'between=none,num_layers=2,learning_rate=0.01,seed=1',
      'between=relu,num_layers=2,learning_rate=0.1,seed=1'}
  assert len(runner.calls) == 8  # 0.0001 was never tuned: no setting chose 0.001
  description = sweep.sweep_description(config_path + ':extend', spec, points, base, {}, commands)
  assert description['extend'] == {'below': [0.0001], 'above': [0.1, 1.0]}
  assert description['tune'] == {'optimizer.learning_rate': [0.001, 0.01, 0.1, 1.0]}
  # train.sweep's own loop grows the grid the same way, from nothing to the seeds
  cli_dir = str(tmp_path / 'cli')
  result = _cli_with_fake_main(tmp_path, config_path + ':extend', cli_dir)
  assert result.returncode == 0, result.stderr
  assert sorted(d for d in os.listdir(cli_dir) if os.path.isdir(os.path.join(cli_dir, d))) == \
      sorted(p.name for p in points)
  assert files.read_json(os.path.join(cli_dir, 'sweep.json'))['tune'] == description['tune']
  text = open(report.write_report(cli_dir)).read()
  assert ('The list could grow where a setting chose its first or last value (below 0.0001, '
          'above 0.1, 1.0), tuned for every setting before any evaluation seed ran: 0.1, 1.0 joined '
          'it.') in text


def test_a_sweep_in_its_tuning_stage_reports_its_tuning_runs(config_path, tmp_path):
  """Tuned on seeds 10 and 11, evaluated on 0-2: every tuning run finished, no evaluation run."""
  sweep_dir = str(tmp_path / 'sweep')
  base, _, _ = _points(config_path, 'fresh')
  spec, points, commands = sweep.prepare(base, config_path + ':fresh', sweep_dir, {}, 'python',
                                         'main.py')
  sweep.run_points(sweep_dir, points, {p.name: ['true'] for p in points},
                   runner=TwoSeedTuningRunner(), log=lambda line: None)
  files.write_json(os.path.join(sweep_dir, 'sweep.json'), sweep.sweep_description(
      config_path + ':fresh', spec, points, base, {}, commands), default=repr)
  text = open(report.write_report(sweep_dir)).read()
  assert 'No evaluation run has finished yet (the sweep is in its tuning stage' in text
  tuning_row = next(line for line in text.splitlines()
                    if line.startswith('| between=none, num_layers=2 |'))
  assert '**1.500**' in tuning_row  # the mean of seeds 10 and 11 at 0.1
  assert not os.path.exists(os.path.join(sweep_dir, 'curves.png'))


def test_a_grid_whose_extension_ran_out_keeps_its_edge_choice(config_path, tmp_path):
  sweep_dir = str(tmp_path / 'sweep')
  base, _, _ = _points(config_path, 'extend_once')
  prepare = lambda: sweep.prepare(base, config_path + ':extend_once', sweep_dir, {}, 'python',
                                  'main.py')
  for _ in range(2):
    _, points, _ = prepare()
    sweep.run_points(sweep_dir, points, {p.name: ['true'] for p in points},
                     runner=TuningRunner(), log=lambda line: None)
  spec, points, commands = prepare()
  assert _tuned_values(spec) == [0.001, 0.01, 0.03]
  assert {p.name for p in points if p.stage == 'seeds'} == {
      'between=none,num_layers=2,learning_rate=0.01,seed=1',
      'between=relu,num_layers=2,learning_rate=0.03,seed=1'}  # the edge, with nothing beyond
  files.write_json(os.path.join(sweep_dir, 'sweep.json'), sweep.sweep_description(
      config_path + ':extend_once', spec, points, base, {}, commands), default=repr)
  assert ('Chosen at an edge of the grown list: between=relu, num_layers=2 (0.03). For these a '
          'value beyond it might have done better') in open(report.write_report(sweep_dir)).read()


@pytest.mark.parametrize('extend, message', [
    ({'above': [0.1]}, "sweep['extend'] needs sweep['tune']"),
    ({'up': [0.1]}, "must be {'below': [values], 'above': [values]}"),
    ({'above': []}, "must be {'below': [values], 'above': [values]}"),
    ({'above': [0.01]}, "repeats a value of the tuned list of 'optimizer.learning_rate'"),
    ({'above': [0.0001]}, "in grid order they would be [0.001, 0.01, 0.0001]"),
    ({'below': [0.0001, 0.0003]}, "in grid order they would be [0.0003, 0.0001, 0.001, 0.01]"),
    ({'above': ['big']}, "sweep['extend'] needs numbers in order"),
])
def test_extend_errors(config_path, extend, message):
  base, _, _ = _points(config_path)
  bad = {'axes': {'model.between': ['none']}, 'extend': extend}
  if "needs sweep['tune']" not in message:
    bad['tune'] = {'optimizer.learning_rate': [0.001, 0.01]}
  with pytest.raises(sweep.SweepError, match=re.escape(message)):
    sweep.expand(base, bad)


class TwoSeedTuningRunner(FakeRunner):
  """Tuning seed 10 alone would choose 0.01 (bpc 1 + |log10 lr + 2|), seed 11 alone 0.1 and more
  sharply (1 + 3 |log10 lr + 1|): the mean over both chooses 0.1 (1.5 against 2.5 and 4.5).
  Evaluation seeds: 1 + lr + 0.01 seed (relu 0.05 worse)."""
  def __call__(self, argv, workdir):
    name = os.path.basename(workdir)
    self.calls.append(name)
    parts = dict(part.split('=') for part in name.split(','))
    lr, seed = float(parts['learning_rate']), int(parts['seed'])
    if seed == 10:
      bpc = 1 + abs(math.log10(lr) + 2)
    elif seed == 11:
      bpc = 1 + 3 * abs(math.log10(lr) + 1)
    else:
      bpc = 1 + lr + 0.01 * seed + (0.05 if parts['between'] == 'relu' else 0)
    _write_results(workdir, 'completed', valid={'bpc': bpc}, test={'bpc': bpc})
    return 0


def test_tuning_on_two_seeds_chooses_on_the_mean_and_evaluates_on_fresh_seeds(config_path,
                                                                             tmp_path):
  sweep_dir = str(tmp_path / 'sweep')
  base, _, _ = _points(config_path, 'fresh')
  prepare = lambda: sweep.prepare(base, config_path + ':fresh', sweep_dir, {}, 'python', 'main.py')
  spec, points, _ = prepare()
  assert len(points) == 2 * 3 * 2 and {p.seed for p in points} == {10, 11}
  runner = TwoSeedTuningRunner()
  sweep.run_points(sweep_dir, points, {p.name: ['true'] for p in points}, runner=runner,
                   log=lambda line: None)
  spec, points, commands = prepare()
  assert {json.loads(k)['model.between']: c['value'] for k, c in spec['choices'].items()} == \
      {'none': 0.1, 'relu': 0.1}  # the mean over seeds 10 and 11, not seed 10's 0.01
  seed_points = [p for p in points if p.stage == 'seeds']
  # every evaluation seed runs afresh: no tuning run is reused
  assert sorted((p.values['model.between'], p.seed) for p in seed_points) == \
      [(b, s) for b in ('none', 'relu') for s in (0, 1, 2)]
  assert all(p.values['optimizer.learning_rate'] == 0.1 for p in seed_points)
  sweep.run_points(sweep_dir, points, {p.name: ['true'] for p in points}, runner=runner,
                   log=lambda line: None)
  assert len(runner.calls) == 12 + 6
  files.write_json(os.path.join(sweep_dir, 'sweep.json'), sweep.sweep_description(
      config_path + ':fresh', spec, points, base, {}, commands), default=repr)
  text = open(report.write_report(sweep_dir)).read()
  assert 'none of them used in tuning' in text and 'averaged over those seeds' in text
  # the results table holds the three evaluation runs only (1.1, 1.11, 1.12: mean 1.110)
  row = next(line for line in text.splitlines() if line.startswith('| none | 2 |'))
  assert [c.strip() for c in row.strip('|').split('|')][3:6] == ['3', '0/3', '1.110 ± 0.010']
  pairs = next(line for line in text.splitlines() if line.startswith('| num_layers=2 | relu |'))
  assert [c.strip() for c in pairs.strip('|').split('|')][2:6] == ['3', '0', '0/3', '+0.050']
  tuning_row = next(line for line in text.splitlines()
                    if line.startswith('| between=none, num_layers=2 |'))
  assert '**1.500**' in tuning_row  # the mean of seed 10 (2.0) and seed 11 (1.0) at 0.1


def test_a_committed_sweep_sees_its_runs_finished_whatever_names_their_configs_use(tmp_path):
  """A copy of results/study_ptb_plain8/runs, whose config.json files name the fields as they
  were then (task, num_steps, optimizer.loss_reduction), and one rewritten with today's names (a
  run written since): every point is finished with the config the sweep runs now; a run whose
  saved config differs is named, in today's field."""
  import shutil
  from configs import study_ptb_plain8
  from train import workdir as workdir_lib
  sweep_dir = str(tmp_path / 'runs')
  shutil.copytree(os.path.join(ROOT, 'results', 'study_ptb_plain8', 'runs'), sweep_dir)
  names = sorted(n for n in os.listdir(sweep_dir) if os.path.isdir(os.path.join(sweep_dir, n)))
  saved = {n: files.read_json(os.path.join(sweep_dir, n, 'config.json')) for n in names}
  assert all({'task', 'num_steps'} <= set(c) and 'loss_reduction' in c['optimizer']
             for c in saved.values())
  today = workdir_lib.read_config(os.path.join(sweep_dir, names[0]))
  files.write_json(os.path.join(sweep_dir, names[0], 'config.json'),
                   json.loads(today.to_json_best_effort()), sort_keys=True)
  spec = os.path.join(ROOT, 'configs', 'study_ptb_plain8.py')

  def changed():
    _, points, _ = sweep.prepare(study_ptb_plain8.get_config(), spec, sweep_dir, {}, 'python',
                                 'main.py')
    statuses = {p.name: sweep.point_status(os.path.join(sweep_dir, p.name)) for p in points}
    assert sorted(statuses) == names and set(statuses.values()) == {'completed'}
    return sweep.changed_points(sweep_dir, points, statuses)
  assert changed() == {}
  files.write_json(os.path.join(sweep_dir, names[1], 'config.json'),
                   {**saved[names[1]], 'num_steps': 32})
  assert changed() == {names[1]: 'config.bptt_length: the run has 32, the sweep now 64'}
