"""Data parallelism: 1 vs 4 devices, checkpoints across device counts, 2 processes; start-up:
a multi-process run without a job to join, and SIGTERM before the training loop."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.trainer_utils import ROOT, load_params, read_metrics

pytestmark = pytest.mark.slow  # several processes and simulated devices, each training

FLAGS = ['--config.num_train_steps=16', '--config.checkpoint_every_steps=8',
         '--config.eval_every_steps=8', '--config.log_every_steps=2']


def _run(workdir, devices=1, extra=(), env=None, wait=True):
  cmd = [sys.executable, os.path.join(ROOT, 'main.py'),
         '--config=' + os.path.join(ROOT, 'tests', 'tiny_config.py'), f'--workdir={workdir}',
         *FLAGS, *extra]
  full_env = dict(os.environ, JAX_PLATFORMS='cpu',
                  XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}', **(env or {}))
  if not wait:
    return subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
  result = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _train_losses(workdir):
  return [r['loss'] for r in read_metrics(workdir) if r['split'] == 'train']


def _assert_same_params(a, b, atol=2e-5):
  step_a, pa = load_params(a)
  step_b, pb = load_params(b)
  assert step_a == step_b and pa.keys() == pb.keys()
  for key in pa:
    np.testing.assert_allclose(pb[key], pa[key], rtol=1e-4, atol=atol, err_msg=key)


@pytest.fixture(scope='module')
def single(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('single'))
  _run(workdir, devices=1)
  return workdir


def test_four_devices_match_one(single, tmp_path):
  result = _run(str(tmp_path), devices=4)
  assert 'on 4 device(s)' in result.stderr
  np.testing.assert_allclose(_train_losses(tmp_path), _train_losses(single), rtol=1e-5)
  _assert_same_params(single, str(tmp_path))


def test_checkpoints_move_between_device_counts(single, tmp_path):
  four_then_one, one_then_four = str(tmp_path / 'a'), str(tmp_path / 'b')
  _run(four_then_one, devices=4, extra=['--config.stop_after_steps=8'])
  _run(four_then_one, devices=1)
  _run(one_then_four, devices=1, extra=['--config.stop_after_steps=8'])
  _run(one_then_four, devices=4)
  _assert_same_params(single, four_then_one)
  _assert_same_params(single, one_then_four)


def test_batch_must_divide_over_devices(tmp_path):
  cmd = [sys.executable, os.path.join(ROOT, 'main.py'),
         '--config=' + os.path.join(ROOT, 'tests', 'tiny_config.py'), f'--workdir={tmp_path}',
         '--config.batch_size=6']
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=4')
  result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1] == (
      'error: config.batch_size=6 must divide by the number of devices (4); use a multiple of 4')


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_train_together(single, tmp_path):
  port = _free_port()
  procs = []
  try:
    for pid in range(2):
      env = {'JAX_COORDINATOR_ADDRESS': f'127.0.0.1:{port}', 'JAX_NUM_PROCESSES': '2',
             'JAX_PROCESS_ID': str(pid)}
      procs.append(_run(str(tmp_path), devices=1, env=env, wait=False))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  assert 'on 2 device(s) in 2 process(es)' in outputs[0]
  np.testing.assert_allclose(_train_losses(tmp_path), _train_losses(single), rtol=1e-5)
  _assert_same_params(single, str(tmp_path))


def test_distributed_without_a_job_is_one_line(tmp_path):
  env = {k: v for k, v in os.environ.items() if not k.startswith(('SLURM_', 'JAX_', 'OMPI_'))}
  cmd = [sys.executable, os.path.join(ROOT, 'main.py'),
         '--config=' + os.path.join(ROOT, 'tests', 'tiny_config.py'), f'--workdir={tmp_path}',
         '--config.distributed=True']
  result = subprocess.run(cmd, cwd=ROOT, env=dict(env, JAX_PLATFORMS='cpu'), capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: config.distributed=True but no job to join (')
  assert last.endswith('set JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and '
                       'JAX_PROCESS_ID for each')


def test_sigterm_during_start_up_stops_at_the_first_step(tmp_path):
  """main.py holds a SIGTERM that comes before the training loop (here: during its imports) and
  stops after the first step with a checkpoint, status preempted, exit status 0."""
  proc = _run(str(tmp_path), wait=False)
  time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out[-3000:]
  assert 'SIGTERM received: saving a checkpoint and stopping' in out
  results = json.loads((tmp_path / 'results.json').read_text())
  assert results == {'status': 'preempted', 'step': 1, 'dataset': 'ptb_char'}
