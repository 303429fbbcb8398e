"""SLURM for real, on a one-node cluster (`.ci/slurm/start DIR`, then `SLURM_CONF=DIR/slurm.conf`):
the job script scripts/slurm/train.sbatch submitted from another directory, its requeue when the
time limit stops the run, two processes with srun, main.py run outside srun, and a sweep as an
array job with one task stopped by `scancel --signal=TERM`.

Without SLURM (no sbatch, or no controller answers) the tests are skipped with the reason; with
CI=true they fail instead. Runs are tiny; the time-limit test needs a run long enough to be still
going when SLURM's time-limit signal comes (10-40 s after the start, see `long_runs`).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.trainer_utils import ROOT, load_params

pytestmark = [pytest.mark.slurm, pytest.mark.slow]  # every test trains runs in SLURM jobs

SCRIPT = os.path.join(ROOT, 'scripts', 'slurm', 'train.sbatch')
CONFIG = '--config=tests/tiny_config.py'  # relative: the job script runs in the clone
# Long enough that SLURM's time-limit signal (up to 40 s in) finds it running on an idle machine:
# 96,000 steps took 57 s, start-up included, on an idle 2-core AMD EPYC.
LONG_STEPS = 192000
LONG = [f'--config.num_train_steps={LONG_STEPS}', '--config.eval_every_steps=1000000',
        '--config.checkpoint_every_steps=24000', '--config.log_every_steps=12000']
SHORT = ['--config.num_train_steps=16', '--config.checkpoint_every_steps=8',
         '--config.eval_every_steps=8', '--config.log_every_steps=2']
SWEEP_CONFIG = '''"""A two-point sweep for tests/test_slurm.py."""
import sys
sys.path.insert(0, {root!r})
from tests.trainer_utils import tiny_config


def get_config(arg=None):
  return tiny_config('ptb_char', num_train_steps=1500, eval_every_steps=100000,
                     checkpoint_every_steps=500, log_every_steps=500)


def get_sweep(arg=None):
  return {{'axes': {{'model.hidden_size': [8, 16]}}}}
'''


def _slurm_problem():
  """Why the tests cannot run here, or None."""
  if shutil.which('sbatch') is None:
    return ('SLURM is not installed (no sbatch); `.ci/slurm/start DIR` installs and starts a '
            'one-node cluster (as root), then export SLURM_CONF=DIR/slurm.conf')
  try:
    out = subprocess.run(['sinfo', '-h', '-o', '%t'], capture_output=True, text=True, timeout=30)
  except subprocess.TimeoutExpired:
    return 'no SLURM controller answers (sinfo timed out); start one with .ci/slurm/start DIR'
  if out.returncode != 0 or not out.stdout.strip():
    reason = (out.stderr.strip().splitlines() or ['no nodes'])[-1]
    return (f'no SLURM controller answers ({reason}); start one with .ci/slurm/start DIR and '
            'export SLURM_CONF=DIR/slurm.conf')
  return None


@pytest.fixture(scope='module', autouse=True)
def slurm():
  problem = _slurm_problem()
  if problem and os.environ.get('CI') == 'true':
    pytest.fail(f'CI=true but {problem}')
  if problem:
    pytest.skip(problem)


def _env(**extra):
  """The environment of a submission by a user whose virtual environment is active (its bin/
  is not needed on PATH) and who is not in the clone."""
  env = {k: v for k, v in os.environ.items()
         if k not in ('STACKED_LSTM_PYTHON', 'STACKED_LSTM_ROOT', 'VIRTUAL_ENV')}
  venv_bin = os.path.dirname(sys.executable)
  env['PATH'] = os.pathsep.join(p for p in env['PATH'].split(os.pathsep) if p != venv_bin)
  if sys.prefix != sys.base_prefix:
    env['VIRTUAL_ENV'] = sys.prefix
  else:
    env['STACKED_LSTM_PYTHON'] = sys.executable
  env.update(JAX_PLATFORMS='cpu', **extra)
  return env


def _sbatch(cwd, *args):
  out = subprocess.run(['sbatch', '--parsable', *args], cwd=cwd, env=_env(), capture_output=True,
                       text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  return out.stdout.strip().split(';')[0]


def _job(job_id):
  """`scontrol show job` of one job (or array task) as {field: value}."""
  out = subprocess.run(['scontrol', '-o', 'show', 'job', job_id], capture_output=True, text=True,
                       timeout=60)
  assert out.returncode == 0, out.stderr
  return dict(re.findall(r'(\w+)=(\S*)', out.stdout.splitlines()[0]))


def _wait(job_id, timeout=400):
  """Waits until no part of the job is pending or running."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    out = subprocess.run(['squeue', '-h', '-j', job_id], capture_output=True, text=True,
                         timeout=60)
    if out.returncode == 0 and not out.stdout.strip():
      return
    time.sleep(1)
  subprocess.run(['scancel', job_id])
  raise AssertionError(f'job {job_id} still in the queue after {timeout} s')


def _wait_for(predicate, timeout=300):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    time.sleep(0.2)
  return False


def _results(workdir):
  with open(os.path.join(workdir, 'results.json')) as f:
    return json.load(f)


def _read(path):
  return open(path).read() if os.path.exists(path) else ''


@pytest.fixture(scope='module')
def long_runs(tmp_path_factory):
  """The job script run to its end, and the same run under a 1-minute time limit, at once.

  The time-limited job asks for SIGTERM 20 s before its 60-s limit. slurmctld checks every 30 s
  and sends it at the first check at which less than 20 + 30 s remain: 10-40 s in, never before
  main.py's first line, which holds it (with TERM@50 a check in the job's first second sent it
  while srun was still starting the interpreter, which died of it, and nothing was requeued).
  main.py saves and exits, and the script requeues the job. Once it waits in the queue, its
  limit is raised to 10 minutes so that the resumed run ends rather than stopping again."""
  base = tmp_path_factory.mktemp('long')
  elsewhere = str(base / 'elsewhere')
  os.makedirs(elsewhere)
  whole, limited = str(base / 'whole'), str(base / 'limited')
  whole_id = _sbatch(elsewhere, SCRIPT, CONFIG, f'--workdir={whole}', *LONG)
  limited_id = _sbatch(elsewhere, '--time=1', '--signal=TERM@20', SCRIPT, CONFIG,
                       f'--workdir={limited}', *LONG)
  requeued = _wait_for(lambda: (lambda j: j['JobState'] == 'PENDING' and j['Restarts'] != '0')(
      _job(limited_id)), timeout=400)
  if requeued:
    subprocess.run(['scontrol', 'update', f'JobId={limited_id}', 'TimeLimit=10'], check=True)
  _wait(limited_id)
  _wait(whole_id)
  return {'whole': (whole_id, whole, os.path.join(elsewhere, f'slurm-{whole_id}.out')),
          'limited': (limited_id, limited, os.path.join(elsewhere, f'slurm-{limited_id}.out'))}


def test_job_script_runs_a_run_to_its_end_from_another_directory(long_runs):
  job_id, workdir, log = long_runs['whole']
  assert _job(job_id)['JobState'] == 'COMPLETED', _read(log)[-3000:]
  results = _results(workdir)
  assert results['status'] == 'completed' and results['step'] == LONG_STEPS
  first = _read(log).splitlines()[0]
  assert first.startswith(f'job {job_id} (restart 0) on ') and ' main.py --config=tests/' in first


def test_time_limit_requeues_and_resumes_to_the_uninterrupted_results(long_runs):
  job_id, workdir, log = long_runs['limited']
  text = _read(log)
  job = _job(job_id)
  print(f'time-limited job {job_id}: Restarts={job["Restarts"]}, state {job["JobState"]}')
  assert int(job['Restarts']) >= 1, text[-3000:]
  assert job['JobState'] == 'COMPLETED', text[-3000:]
  assert 'requeue: the run stopped early (status preempted)' in text
  assert 'resumed from step' in text and text.count('job ' + job_id) >= 2  # one log, appended
  results, reference = _results(workdir), _results(long_runs['whole'][1])
  assert results['status'] == 'completed' and results['steps_this_run'] < LONG_STEPS
  for split in ('valid', 'test'):
    assert results[split] == reference[split], split
  step_a, a = load_params(workdir)
  step_b, b = load_params(long_runs['whole'][1])
  assert step_a == step_b == LONG_STEPS
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_two_tasks_with_srun_equal_one_process(tmp_path):
  """`sbatch --ntasks=2` of the job script: srun starts two JAX processes; within 1e-5 of one
  process (the same batches, summed over two processes in another order)."""
  two, one = str(tmp_path / 'two'), str(tmp_path / 'one')
  job_id = _sbatch(str(tmp_path), '--ntasks=2', SCRIPT, CONFIG, f'--workdir={two}', *SHORT,
                   '--config.distributed=True')
  single = subprocess.run([sys.executable, 'main.py', CONFIG, f'--workdir={one}', *SHORT],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  assert single.returncode == 0, single.stderr[-3000:]
  _wait(job_id)
  log = _read(str(tmp_path / f'slurm-{job_id}.out'))
  assert _job(job_id)['JobState'] == 'COMPLETED', log[-3000:]
  assert 'on 2 device(s) in 2 process(es)' in log
  assert log.count('final valid') == 1  # process 1 prints warnings and errors only
  results, reference = _results(two), _results(one)
  assert results['processes'] == 2
  for split in ('valid', 'test'):
    for key, value in reference[split].items():
      np.testing.assert_allclose(results[split][key], value, rtol=1e-5, err_msg=key)
  _, a = load_params(two)
  _, b = load_params(one)
  for key in a:
    np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=2e-5, err_msg=key)


def test_main_outside_srun_in_a_two_task_job_says_how_to_launch(tmp_path):
  command = (f'{sys.executable} main.py {CONFIG} --workdir={tmp_path / "w"} '
             '--config.distributed=True')
  job_id = _sbatch(str(tmp_path), '--ntasks=2', f'--chdir={ROOT}',
                   f'--output={tmp_path}/slurm-%j.out', f'--wrap={command}')
  _wait(job_id)
  lines = _read(str(tmp_path / f'slurm-{job_id}.out')).strip().splitlines()
  assert lines[-1] == ('error: this SLURM job has 2 task(s) but main.py was not started by srun; '
                       'start one process per task with: srun python main.py --config=... '
                       '--workdir=... --config.distributed=True')
  assert not any('Traceback' in line for line in lines)
  assert _job(job_id)['ExitCode'] == '1:0'


@pytest.fixture(scope='module')
def array_sweep(tmp_path_factory):
  """A two-point sweep written with --slurm and submitted as an array job; task 1 gets
  `scancel --signal=TERM` once main.py runs, saves, and its job script requeues it."""
  base = tmp_path_factory.mktemp('sweep')
  config = base / 'sweep_config.py'
  config.write_text(SWEEP_CONFIG.format(root=ROOT))
  sweep_dir, script = str(base / 'runs'), str(base / 'sweep.sh')
  out = subprocess.run([sys.executable, '-m', 'train.sweep', f'--config={config}',
                        f'--sweep_dir={sweep_dir}', f'--slurm={script}'], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  array_id = _sbatch(str(base), script)
  task_log = os.path.join(sweep_dir, f'slurm-{array_id}_1.out')
  started = _wait_for(lambda: 'JAX process 0 of 1' in _read(task_log))
  signalled = started and subprocess.run(['scancel', '--signal=TERM', f'{array_id}_1']
                                         ).returncode == 0
  _wait(array_id)
  return array_id, sweep_dir, signalled


def test_sweep_as_an_array_job_finishes_every_point_and_the_report_reads_it(array_sweep):
  array_id, sweep_dir, _ = array_sweep
  names = ['hidden_size=8,seed=0', 'hidden_size=16,seed=0']
  for task, name in enumerate(names):
    log = _read(os.path.join(sweep_dir, f'slurm-{array_id}_{task}.out'))
    assert f'point {name}' in log
    assert _results(os.path.join(sweep_dir, name))['status'] == 'completed', log[-3000:]
  out = subprocess.run([sys.executable, '-m', 'train.report', f'--sweep_dir={sweep_dir}'],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  report = open(os.path.join(sweep_dir, 'report.md')).read()
  assert all(name in report for name in names)


def test_scancel_term_of_an_array_task_requeues_and_resumes(array_sweep):
  array_id, sweep_dir, signalled = array_sweep
  assert signalled, 'task 1 did not start'
  log = _read(os.path.join(sweep_dir, f'slurm-{array_id}_1.out'))
  assert int(_job(f'{array_id}_1')['Restarts']) >= 1, log[-3000:]
  assert 'SIGTERM received: saving a checkpoint and stopping' in log
  assert f'requeueing job {array_id}_1' in log and 'resumed from step' in log
  results = _results(os.path.join(sweep_dir, 'hidden_size=16,seed=0'))
  assert results['status'] == 'completed' and results['steps_this_run'] < 1500
