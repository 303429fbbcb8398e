"""The command line: resume after kill -9, SIGTERM, and one-line errors."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.trainer_utils import ROOT, assert_same_params, run_main
from train.workdir import saved_steps

pytestmark = pytest.mark.slow  # main.py as a real process: kill -9, SIGTERM, flag errors

LONG = ['--config.num_train_steps=60', '--config.checkpoint_every_steps=5',
        '--config.eval_every_steps=1000', '--config.model.hidden_size=48',
        '--config.bptt_length=32', '--config.model.dropout=0.1']


def _wait_for(predicate, proc, timeout=120):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    if proc.poll() is not None:
      return False
    time.sleep(0.005)
  return False


def test_kill_9_then_resume_matches_uninterrupted(tmp_path):
  whole, killed = str(tmp_path / 'whole'), str(tmp_path / 'killed')
  done = run_main(whole, *LONG)
  assert done.returncode == 0, done.stdout + done.stderr
  proc = run_main(killed, *LONG, wait=False)
  try:
    assert _wait_for(lambda: any(s >= 10 for s in saved_steps(killed)), proc), \
        'no checkpoint appeared'
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
  finally:
    proc.kill()
  assert proc.returncode == -signal.SIGKILL
  interrupted_at = max(saved_steps(killed))
  assert interrupted_at < 60, 'the run finished before it could be killed'
  resumed = run_main(killed, *LONG)
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr
  assert 'resumed from step' in resumed.stderr
  assert_same_params(killed, whole, 60)


def test_sigterm_writes_checkpoint_and_exits_cleanly(tmp_path):
  workdir = str(tmp_path)
  proc = run_main(workdir, *LONG[:1], '--config.checkpoint_every_steps=1000',
                  '--config.log_every_steps=1', '--config.model.hidden_size=48',
                  '--config.bptt_length=32', wait=False)
  try:
    assert _wait_for(lambda: os.path.exists(os.path.join(workdir, 'metrics.jsonl')), proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
  finally:
    proc.kill()
  assert proc.returncode == 0, out
  results = json.loads((tmp_path / 'results.json').read_text())
  assert results['status'] == 'preempted'
  assert saved_steps(workdir) == [results['step']] and 0 < results['step'] < 60


def test_flags_of_old_fields_set_todays(tmp_path):
  """--config.task, --config.num_steps and --config.optimizer.loss_reduction, as commands
  written before the renames give them: the run trains with today's fields set to their values."""
  result = run_main(str(tmp_path), '--config.task=ptb_char', '--config.num_steps=12',
                    '--config.optimizer.loss_reduction=sequence', '--config.num_train_steps=2',
                    '--config.eval_every_steps=2')
  assert result.returncode == 0, result.stderr
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert (saved['dataset'], saved['bptt_length'], saved['loss_reduction']) == \
      ('ptb_char', 12, 'sequence')
  assert not {'task', 'num_steps'} & set(saved) and 'loss_reduction' not in saved['optimizer']
  assert json.loads((tmp_path / 'results.json').read_text())['status'] == 'completed'


def test_bad_override_is_one_line(tmp_path):
  result = run_main(str(tmp_path), '--config.model.between=sofmax')
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: config.model: between='sofmax' is not known"), result.stderr
  assert 'Traceback' not in result.stderr


def test_misspelt_field_is_refused(tmp_path):
  result = run_main(str(tmp_path), '--config.model.num_layer=3')
  assert result.returncode != 0
  assert 'num_layer' in result.stderr


@pytest.mark.parametrize('flags, expected', [
    (['--config.model.nmu_layers=3'],
     "error: --config.model.nmu_layers: config has no field 'model.nmu_layers'; did you mean "
     'config.model.num_layers'),
    (['--config.model.num_layers=abc'],
     "error: --config.model.num_layers=abc: config.model.num_layers is an integer, not 'abc'"),
    (['--config.optimizer.b1=x'], "config.optimizer.b1 is a number, not 'x'"),
    (['--config.model.ffn_gated=maybe'], "config.model.ffn_gated is true or false, not 'maybe'"),
    (['--config.data.mnist1d=3'], 'config.data.mnist1d is a group of fields, not one'),
    (['--workdr=/tmp/x'], "Unknown command line flag 'workdr'. Did you mean: workdir"),
    (['--config.num_steps=abc'],
     "error: --config.num_steps=abc: config.num_steps (an old field) is an integer, not 'abc'"),
])
def test_flag_errors_are_one_line_with_status_2(tmp_path, flags, expected):
  result = run_main(str(tmp_path), *flags)
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and expected in lines[0], result.stderr
  assert not os.path.exists(tmp_path / 'config.json')


@pytest.mark.parametrize('spec, expected', [
    ('configs/stak.py', '--config=configs/stak.py: no such file; did you mean configs/stack.py'),
    ('configs/stack.py:layrs=4', "--config=configs/stack.py:layrs=4: config argument 'layrs' is "
     'not known; valid: layers, hidden, between, full'),
])
def test_config_file_errors_are_one_line_with_status_2(tmp_path, spec, expected):
  result = subprocess.run([sys.executable, 'main.py', f'--config={spec}',
                           f'--workdir={tmp_path}'], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f'error: {expected}'), result.stderr
