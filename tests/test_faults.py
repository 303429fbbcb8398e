"""Faults made to happen for real: damaged and missing checkpoint files, a read-only workdir, a
full disk at a checkpoint, kill -9 at points inside a save, SIGTERM during an evaluation, device
memory that runs out, files in the way of the run's own. Each run through main.py checks the
exit status, that stderr holds one error line (or only log lines) and no traceback, the files
left behind, and where the run resumes, that it ends with the parameters of an uninterrupted run.

The faults inside a run are made at a chosen point by a prelude (`run_main(prelude=...)`): Python
run in the training process before main.py, which wraps one function so that the real fault
happens there (the process kills itself, the disk is filled, ...).
"""
import contextlib
import errno
import glob
import hashlib
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import pytest

from tests.trainer_utils import ROOT, assert_same_params, run_main, tiny_config, write_old_names
from train import checksums, faults, lock, trainer, workdir as workdir_lib
from train.workdir import saved_steps

pytestmark = pytest.mark.slow  # processes killed, full disks, damaged checkpoints of trained runs

STEPS = 30  # tests/tiny_config.py: checkpoints at 10, 20 and 30, evaluations at 15 and 30

# Preludes: each makes one fault happen inside the run.
SIGTERM_IN_EVALUATION = """
import os, signal
from train import trainer
_evaluate = trainer.evaluate
def evaluate(*args, **kwargs):
  os.kill(os.getpid(), signal.SIGTERM)
  return _evaluate(*args, **kwargs)
trainer.evaluate = evaluate
"""
KILL_BEFORE_COMMIT = """
import os, signal
from orbax.checkpoint._src.path import atomicity
def on_commit_callback(*args, **kwargs):  # the step's files are written, not yet renamed
  os.kill(os.getpid(), signal.SIGKILL)
atomicity.on_commit_callback = on_commit_callback
"""
KILL_BEFORE_DELETING_OLD = """
import os, signal
from orbax.checkpoint._src.path import deleter
def delete(self, step):  # the new step is complete; the oldest is due to be deleted
  os.kill(os.getpid(), signal.SIGKILL)
deleter.StandardCheckpointDeleter.delete = delete
"""
DISK_FULL_AT_SAVE_20 = """
import os
from train import workdir as workdir_lib
_save = workdir_lib.Checkpoints.save
def save(self, step, state, meta):
  if step == 20:
    fill({directory!r})
  return _save(self, step, state, meta)
workdir_lib.Checkpoints.save = save
"""
FILL_DISK = """
def fill(directory):  # a file that takes every free block of the filesystem
  with open(os.path.join(directory, 'filler'), 'wb', buffering=0) as f:
    try:
      while True:
        f.write(bytes(4096))
    except OSError:
      pass
"""
FILE_SIZE_LIMIT = """
import resource, signal
def fill(directory):  # no file may grow any more: writes fail with EFBIG
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
"""
STEP_NEEDING_256_GIB = """
import jax.numpy as jnp
from train import trainer
_make = trainer.make_train_step
def make_train_step(*args, **kwargs):
  step = _make(*args, **kwargs)
  def train_step(state, batch, reset):
    state, metrics = step(state, batch, reset)
    waste = jnp.zeros((2 ** 16, 2 ** 20), jnp.float32).at[state.step, 0].set(1.0)
    return state, dict(metrics, waste=waste.max())
  return train_step
trainer.make_train_step = make_train_step
"""

_LOG = re.compile(r'[IW]\d{4} \d\d:\d\d:\d\d')  # absl's INFO and WARNING lines


def assert_reported(result, status=1):
  """The exit status is `status`; stderr holds log lines and, for a failure, one error line
  (returned), and no traceback."""
  assert 'Traceback' not in result.stderr, result.stderr
  rest = [line for line in result.stderr.splitlines() if line and not _LOG.match(line)]
  assert result.returncode == status, result.stderr
  if status == 0:
    assert rest == [], result.stderr
    return None
  assert len(rest) == 1 and rest[0].startswith('error: '), result.stderr
  return rest[0][len('error: '):]


def listing(directory):
  """{relative path: size} of every file under `directory`."""
  return {os.path.relpath(os.path.join(root, name), directory):
          os.path.getsize(os.path.join(root, name))
          for root, _, names in os.walk(directory) for name in names}


def data_files(workdir, kind, step):
  """The array data files of a checkpoint (what a half-copied workdir lacks or truncates)."""
  files = glob.glob(os.path.join(workdir, kind, str(step), '*', 'ocdbt.process_0', 'd', '*'))
  assert files
  return files


def truncate(paths):
  for path in paths:
    os.truncate(path, os.path.getsize(path) // 2)


@pytest.fixture(scope='module', autouse=True)
def compile_cache(tmp_path_factory):
  """The module's runs of main.py share their compiled programs (JAX's persistent cache), which
  halves the time of each."""
  with pytest.MonkeyPatch.context() as env:
    env.setenv('JAX_COMPILATION_CACHE_DIR', str(tmp_path_factory.mktemp('compile_cache')))
    env.setenv('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
    env.setenv('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
    yield


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """An uninterrupted run of tests/tiny_config.py (checkpoints 20 and 30, best/30)."""
  workdir = str(tmp_path_factory.mktemp('reference') / 'run')
  result = run_main(workdir)
  assert_reported(result, status=0)
  return workdir


@pytest.fixture
def copy_of(tmp_path, reference):
  """A copy of the reference run to damage."""
  workdir = str(tmp_path / 'run')
  shutil.copytree(reference, workdir)
  return workdir


# ------------------------------------------------------------------------------------------------
# Damaged checkpoints


def test_a_damaged_newest_checkpoint_is_set_aside_and_the_run_resumes(copy_of, reference):
  """The newest checkpoint and the best one truncated: warnings name them, they are moved to
  <step>.damaged, and the run resumes from step 20 to the reference's parameters."""
  damaged = data_files(copy_of, 'checkpoints', 30) + data_files(copy_of, 'best', 30)
  truncate(damaged)
  before = {p: os.path.getsize(p) for p in damaged}
  result = run_main(copy_of, '--config.num_train_steps=30')
  assert_reported(result, status=0)
  warnings = [line for line in result.stderr.splitlines() if line.startswith('W')]
  ckpts, best = os.path.join(copy_of, 'checkpoints'), os.path.join(copy_of, 'best')
  assert any(f'checkpoint 30 in {ckpts} is damaged' in line and
             f'moved to {ckpts}/30.damaged; using step 20' in line for line in warnings), warnings
  assert any(f'best checkpoint 30 in {best} is damaged' in line for line in warnings), warnings
  assert f'resumed from step 20 in {copy_of}' in result.stderr
  assert sorted(os.listdir(ckpts)) == ['20', '30', '30.damaged']
  assert sorted(os.listdir(best)) == ['30', '30.damaged']
  moved = {p.replace('/30/', '/30.damaged/'): size for p, size in before.items()}
  assert {p: os.path.getsize(p) for p in moved} == moved  # set aside as it was
  assert_same_params(copy_of, reference, STEPS)
  assert json.loads(open(os.path.join(copy_of, 'results.json')).read())['status'] == 'completed'


def test_when_no_checkpoint_restores_the_run_stops_and_moves_nothing(copy_of):
  for step in (20, 30):
    for path in data_files(copy_of, 'checkpoints', step):
      os.remove(path)
  before = listing(copy_of)
  error = assert_reported(run_main(copy_of))
  ckpts = os.path.join(copy_of, 'checkpoints')
  assert error.startswith(f'no checkpoint in {ckpts} can be restored (step 30: '), error
  assert '; step 20: ' in error and error.endswith(
      'nothing was moved or deleted: restore the directory from a copy, or move it away to start '
      'the run afresh')
  assert listing(copy_of) == before


def test_evaluate_refuses_a_damaged_checkpoint_and_writes_nothing(copy_of):
  truncate(data_files(copy_of, 'checkpoints', 30))
  before = listing(copy_of)
  result = subprocess.run([sys.executable, '-m', 'train.evaluate', f'--workdir={copy_of}'],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS='cpu'))
  error = assert_reported(result)
  assert error.startswith(f'checkpoint 30 in {copy_of}/checkpoints is damaged ('), error
  assert error.endswith('); saved steps: 20, 30; best: 30; choose another step'), error
  assert listing(copy_of) == before
  import train
  assert train.load_run(copy_of, step=20).step == 20  # the others still load


# ------------------------------------------------------------------------------------------------
# Writes that fail


@contextlib.contextmanager
def read_only(directory):
  """`directory` made read-only for real; yields the errno a write gets. Root writes through
  permission bits, so for root it is a read-only bind mount."""
  if os.geteuid() != 0:
    for root, dirs, _ in os.walk(directory):
      os.chmod(root, 0o555)
    try:
      yield errno.EACCES
    finally:
      for root, dirs, _ in os.walk(directory):
        os.chmod(root, 0o755)
    return
  if subprocess.run(['mount', '--bind', directory, directory]).returncode:
    pytest.skip('root without permission to mount: nothing can make a directory read-only')
  try:
    subprocess.run(['mount', '-o', 'remount,bind,ro', directory], check=True)
    yield errno.EROFS
  finally:
    subprocess.run(['umount', directory], check=True)


def test_a_read_only_workdir_is_one_line(copy_of):
  before = listing(copy_of)
  with read_only(copy_of) as code:
    error = assert_reported(run_main(copy_of, '--config.num_train_steps=40'))
  # A read-only filesystem refuses the lock file, the run's first write. Under read-only
  # directories the existing lock file is writable, config.json and dataset.json are unchanged
  # (not rewritten), and the first new file is metrics.jsonl's replacement.
  name = lock.LOCK_FILE if code == errno.EROFS else 'metrics.jsonl'
  assert error == f'could not write {copy_of}/{name}: [Errno {code}] {os.strerror(code)}'
  assert listing(copy_of) == before


@pytest.fixture
def small_disk(tmp_path):
  """(directory, prelude code defining fill(directory)): a 3 MB tmpfs that fill() fills, where
  mounting is permitted; else a plain directory, and fill() stops files from growing
  (RLIMIT_FSIZE: writes fail with EFBIG)."""
  disk = tmp_path / 'disk'
  disk.mkdir()
  mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=3m', 'tmpfs', str(disk)],
                           capture_output=True).returncode == 0
  yield str(disk), (FILL_DISK if mounted else FILE_SIZE_LIMIT)
  if mounted:
    subprocess.run(['umount', str(disk)], check=True)


def test_a_full_disk_at_a_checkpoint_is_one_line_and_the_run_resumes(small_disk, reference):
  disk, fill = small_disk
  workdir = os.path.join(disk, 'run')
  result = run_main(workdir, prelude=fill + DISK_FULL_AT_SAVE_20.format(directory=disk))
  error = assert_reported(result)
  code = errno.ENOSPC if fill == FILL_DISK else errno.EFBIG
  assert error == (f'could not write checkpoint at step 20 to {workdir}/checkpoints: '
                   f'[Errno {code}] {os.strerror(code)}; earlier checkpoints are untouched')
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['10']  # no partial 20
  assert not os.path.exists(os.path.join(workdir, 'results.json'))  # no room for it either
  if fill == FILL_DISK:
    os.remove(os.path.join(disk, 'filler'))  # space again
  resumed = run_main(workdir)
  assert_reported(resumed, status=0)
  assert f'resumed from step 10 in {workdir}' in resumed.stderr
  assert_same_params(workdir, reference, STEPS)


@pytest.mark.parametrize('make, path, code', [
    ('file', 'tensorboard', errno.EEXIST),
    ('directory', 'metrics.jsonl', errno.EISDIR),
    ('directory', 'results.json', errno.EISDIR),
])
def test_a_file_in_the_way_is_one_fault_naming_it(tmp_path, make, path, code):
  """Something of the wrong kind where the run writes one of its files: the fault names it."""
  workdir = tmp_path / 'run'
  workdir.mkdir()
  if make == 'directory':
    (workdir / path).mkdir()
  else:
    (workdir / path).write_text('')
  config = tiny_config(num_train_steps=10, eval_every_steps=5, checkpoint_every_steps=5,
                       log_every_steps=5)
  with pytest.raises(faults.RunFault) as raised:
    trainer.train_and_evaluate(config, str(workdir))
  assert str(raised.value) == f'could not write {workdir}/{path}: [Errno {code}] ' \
                              f'{os.strerror(code)}'


def test_a_workdir_of_another_run_is_refused(copy_of):
  """The reference run's workdir, given a wider model: refused before anything is written."""
  before = listing(copy_of)
  with pytest.raises(trainer.ConfigError) as raised:
    trainer.train_and_evaluate(tiny_config(**{'model.hidden_size': 32}), copy_of)
  assert str(raised.value) == (f'workdir {copy_of} holds a run with a different config '
                               '(model.hidden_size: 16 -> 32); use a new --workdir or the saved '
                               'config')
  assert listing(copy_of) == before


def test_an_unreadable_config_json_is_refused(tmp_path):
  (tmp_path / 'config.json').write_text('{"dataset": "ptb_ch')
  with pytest.raises(trainer.ConfigError, match=f'^{tmp_path}/config.json is not readable JSON'):
    trainer.train_and_evaluate(tiny_config(), str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == [lock.LOCK_FILE, 'config.json']
  assert lock_record(str(tmp_path)) is None  # the lock was given back


def test_a_failed_append_leaves_no_partial_line(tmp_path):
  """A record that only half fits (the file may not grow past its size + 10 bytes) is cut back
  off; the error names the file."""
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1}\n')
  code = f"""
import resource, signal
from train import files, faults
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({path.stat().st_size + 10}, resource.RLIM_INFINITY))
try:
  files.append({str(path)!r}, '{{"step": 2, "loss": 1.5}}\\n')
except faults.RunFault as e:
  print(e)
"""
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
  assert result.stdout.strip() == f'could not write {path}: [Errno 27] File too large', result
  assert path.read_text() == '{"step": 1}\n'


# ------------------------------------------------------------------------------------------------
# Interruptions


def test_kills_inside_saves_and_sigterm_in_evaluation_resume_to_the_same_parameters(
    tmp_path, reference):
  workdir = str(tmp_path / 'run')
  ckpts = os.path.join(workdir, 'checkpoints')
  unfinished = lambda: glob.glob(os.path.join(ckpts, '*.orbax-checkpoint-tmp*'))

  stopped = run_main(workdir, prelude=SIGTERM_IN_EVALUATION)  # the evaluation at step 15
  assert_reported(stopped, status=0)
  results = json.loads(open(os.path.join(workdir, 'results.json')).read())
  assert results == {'dataset': 'ptb_char', 'status': 'preempted', 'step': 15}
  assert saved_steps(workdir) == [10, 15]
  records = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert {'step': 15, 'split': 'valid'}.items() <= records[-1].items()  # it ended first

  killed = run_main(workdir, prelude=KILL_BEFORE_COMMIT)  # saving step 20
  assert killed.returncode == -signal.SIGKILL, killed.stderr
  assert saved_steps(workdir) == [10, 15] and len(unfinished()) == 1

  killed = run_main(workdir, prelude=KILL_BEFORE_DELETING_OLD)  # 20 saved, 10 due to go
  assert killed.returncode == -signal.SIGKILL, killed.stderr
  assert saved_steps(workdir) == [10, 15, 20] and unfinished() == []
  # The killed holder's record stays in the lock file; its lock died with it (no stale lock).
  assert lock_record(workdir)['what'] == 'training'

  resumed = run_main(workdir)
  assert_reported(resumed, status=0)
  assert f'resumed from step 20 in {workdir}' in resumed.stderr
  assert saved_steps(workdir) == [20, 30] and unfinished() == []
  assert_same_params(workdir, reference, STEPS)


# ------------------------------------------------------------------------------------------------
# Device memory


def test_out_of_device_memory_names_the_sizes(tmp_path, reference):
  """A training step that XLA cannot allocate (256 GiB) is one line with the batch, the time
  steps, the parameter count and what would use less memory."""
  result = run_main(str(tmp_path / 'run'), prelude=STEP_NEEDING_256_GIB)
  error = assert_reported(result)
  num_params = json.loads(open(os.path.join(reference, 'results.json')).read())['num_params']
  assert re.fullmatch(
      r'out of memory on the device \(RESOURCE_EXHAUSTED: Out of memory allocating 2748\d{8} '
      rf'bytes.\) for batches of 8 x 10 \(config.batch_size x time steps\) and {num_params:,} '
      r'parameters; use a smaller config.batch_size or config.bptt_length, '
      r'config.model.remat=True, or config.model.scan_layers=True for a deep stack', error), error
  results = json.loads(open(os.path.join(tmp_path, 'run', 'results.json')).read())
  assert results == {'dataset': 'ptb_char', 'status': 'failed', 'message': error}


# ------------------------------------------------------------------------------------------------
# Checkpoints, directly: the ways a checkpoint is damaged, set aside, garbage collection


def _state(value):
  """Arrays large enough to be kept in data files (orbax inlines small ones)."""
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  w = value + jnp.sin(jnp.arange(64 * 64, dtype=jnp.float32)).reshape(64, 64)
  return {'w': jax.device_put(w, device)}


def _abstract(state):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                      state)


def _saved(workdir, steps, keep=3):
  ckpts = workdir_lib.Checkpoints(workdir, keep)
  for step in steps:
    ckpts.save(step, _state(step), {'step': step})
  ckpts.close()


DAMAGES = {
    'truncated data': lambda root: truncate(data_files(os.path.dirname(root), '.',
                                                       os.path.basename(root))),
    'no manifest': lambda root: [os.remove(p) for p in glob.glob(f'{root}/state/**/manifest.ocdbt',
                                                                   recursive=True)],
    'meta not JSON': lambda root: open(f'{root}/meta/metadata', 'w').write('{"step": '),
    'no state': lambda root: shutil.rmtree(f'{root}/state'),
    'empty': lambda root: [shutil.rmtree(root), os.mkdir(root)],
}


@pytest.mark.parametrize('damage', DAMAGES)
def test_each_kind_of_damage_is_set_aside(tmp_path, damage):
  _saved(str(tmp_path), [10, 20])
  DAMAGES[damage](str(tmp_path / 'checkpoints' / '20'))
  ckpts = workdir_lib.Checkpoints(str(tmp_path), 3)
  state, meta = ckpts.restore(_abstract(_state(0)))
  assert meta == {'step': 10} and float(state['w'][0, 0]) == 10
  assert ckpts.manager.all_steps() == [10]
  ckpts.close()
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['10', '20.damaged']


def test_set_aside_names_are_numbered_and_collection_keeps_the_last_good_one(tmp_path):
  """keep=2 with the newest damaged: after resuming from the good one, the next saves collect
  only real steps, and a second damaged 30 goes to 30.damaged.2."""
  _saved(str(tmp_path), [10, 20, 30], keep=2)
  root = str(tmp_path / 'checkpoints')
  for _ in range(2):
    truncate(data_files(root, '.', 30))
    ckpts = workdir_lib.Checkpoints(str(tmp_path), 2)
    assert ckpts.restore(_abstract(_state(0)))[1] == {'step': 20}
    ckpts.save(30, _state(30), {'step': 30})
    ckpts.close()
  ckpts = workdir_lib.Checkpoints(str(tmp_path), 2)
  ckpts.save(40, _state(40), {'step': 40})
  assert ckpts.manager.all_steps() == [30, 40]
  assert ckpts.restore(_abstract(_state(0)))[1] == {'step': 40}
  ckpts.close()
  assert sorted(os.listdir(root)) == ['30', '30.damaged', '30.damaged.2', '40']


def test_a_damaged_best_checkpoint_is_set_aside(tmp_path):
  ckpts = workdir_lib.Checkpoints(str(tmp_path), 2)
  ckpts.save_best(15, _state(15), {'loss': 1.5})
  assert ckpts.best_valid(_abstract(_state(0))) == {'loss': 1.5}
  ckpts.close()
  truncate(data_files(str(tmp_path), 'best', 15))
  ckpts = workdir_lib.Checkpoints(str(tmp_path), 2)
  assert ckpts.best_valid(_abstract(_state(0))) is None
  ckpts.close()
  assert os.listdir(tmp_path / 'best') == ['15.damaged']


def test_os_errors_are_found_inside_library_exceptions():
  tensorstore = ValueError("RESOURCE_EXHAUSTED: Error writing local file \"/x/manifest.ocdbt\": "
                           "Failed to write 166 bytes to file 20: No space left on device "
                           "[os_error_code='28'] [tensorstore_spec='{\"driver\": \"zarr\"}']")
  assert faults.os_error(tensorstore).errno == errno.ENOSPC
  assert faults.reason(tensorstore) == ('RESOURCE_EXHAUSTED: Error writing local file '
                                        '"/x/manifest.ocdbt": Failed to write 166 bytes to file '
                                        '20: No space left on device')
  try:
    try:
      raise PermissionError(errno.EACCES, 'Permission denied', '/x/y')
    except OSError as e:
      raise RuntimeError('orbax failed') from e
  except RuntimeError as wrapped:
    with pytest.raises(faults.RunFault, match=r'^could not write a checkpoint to /x: '
                                              r'\[Errno 13\] Permission denied; note$'):
      with faults.writing('/x', 'a checkpoint', 'note'):
        raise wrapped
  with pytest.raises(KeyError):  # not caused by the OS: passes through
    with faults.writing('/x'):
      raise KeyError('a bug')


# ------------------------------------------------------------------------------------------------
# One writer per workdir (train/lock.py)

# Prelude: the first evaluation waits until GATE.open exists (after making GATE.reached), so that
# other processes can be started while the run is in the middle of its steps.
GATE_AT_EVALUATION = """
import os, time
from train import trainer
_evaluate = trainer.evaluate
def evaluate(*args, **kwargs):
  gate = {gate!r}
  if not os.path.exists(gate + '.reached'):
    open(gate + '.reached', 'w').close()
    while not os.path.exists(gate + '.open'):
      time.sleep(0.05)
  return _evaluate(*args, **kwargs)
trainer.evaluate = evaluate
"""


def wait_for(path, process=None, timeout=240):
  start = time.time()
  while not os.path.exists(path):
    assert process is None or process.poll() is None, process.communicate()[0]
    assert time.time() - start < timeout, f'{path} never appeared'
    time.sleep(0.1)


def finished(process, timeout=300):
  """A Popen of run_main(wait=False), waited for, as subprocess.run's result."""
  output = process.communicate(timeout=timeout)[0]
  return types.SimpleNamespace(returncode=process.returncode, stderr=output, stdout='')


def run_tool(module, *args, stdout=subprocess.PIPE):
  """`python -m module args` in a subprocess, its stdout to `stdout`."""
  return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, stdout=stdout,
                        stderr=subprocess.PIPE, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))


def lock_record(workdir):
  text = open(os.path.join(workdir, lock.LOCK_FILE)).read()
  return json.loads(text) if text else None


def records(workdir, keys=('step', 'split', 'loss')):
  return [{k: r.get(k) for k in keys} for r in map(json.loads, open(
      os.path.join(workdir, 'metrics.jsonl')))]


def test_two_trainers_on_one_workdir_make_one_run(tmp_path, reference):
  """Two trainers started 0.5 s apart, then a third trainer and an evaluation while the run is at
  its first evaluation: one trains, every other is refused in one line naming it, and the run
  ends as an undisturbed one."""
  workdir, gate = str(tmp_path / 'run'), str(tmp_path / 'gate')
  prelude = GATE_AT_EVALUATION.format(gate=gate)
  first = run_main(workdir, prelude=prelude, wait=False)
  time.sleep(0.5)
  second = run_main(workdir, prelude=prelude, wait=False)
  wait_for(gate + '.reached')
  holder = lock_record(workdir)
  winner, loser = (first, second) if holder['pid'] == first.pid else (second, first)
  assert holder['pid'] == winner.pid and holder['what'] == 'training'
  busy = (f'{workdir} is in use by pid {winner.pid} on host {holder["host"]} (training, since '
          f'{holder["started"]}): one process writes to a run directory at a time; wait for it to '
          f'end, or stop it (kill -TERM {winner.pid} saves a checkpoint and exits)')
  assert assert_reported(finished(loser)) == busy
  assert assert_reported(run_main(workdir)) == busy  # mid-run
  assert assert_reported(run_tool('train.evaluate', f'--workdir={workdir}')) == busy
  open(gate + '.open', 'w').close()
  assert_reported(finished(winner), status=0)
  assert_same_params(workdir, reference, STEPS)
  results, undisturbed = (json.load(open(os.path.join(d, 'results.json')))
                          for d in (workdir, reference))
  assert (results['status'], results['valid'], results['test']) == (
      'completed', undisturbed['valid'], undisturbed['test'])
  assert records(workdir) == records(reference)  # no record twice
  assert len(os.listdir(os.path.join(workdir, 'tensorboard'))) == 1
  assert not os.path.exists(os.path.join(workdir, 'eval'))
  assert lock_record(workdir) is None  # a holder that ends cleanly leaves no record


@contextlib.contextmanager
def held_by_another_process(directory, what='training'):
  """`directory`'s lock, held by a process that waits until the block ends; yields its pid."""
  holder = subprocess.Popen(
      [sys.executable, '-c', f'from train import lock; lock.take({directory!r}, {what!r}); '
       'print("held", flush=True); import sys; sys.stdin.read()'],
      cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline() == 'held\n'
  try:
    yield holder.pid
  finally:
    holder.stdin.close()
    holder.wait(timeout=60)


def test_an_import_into_a_held_directory_is_refused_and_leftovers_wait_for_the_lock(tmp_path):
  """train.export --from_torch into a directory another process holds is refused before it
  writes; orbax's temporary directories are removed only by the lock's holder."""
  torch = pytest.importorskip('torch')
  from train import data, export
  target = str(tmp_path / 'imported')
  os.makedirs(target)
  vocab = data.Vocabulary(itos=tuple('abc'), level='char')
  with held_by_another_process(target, 'import') as pid:
    with pytest.raises(lock.Busy, match=rf'^{target} is in use by pid {pid} on host .* \(import, '):
      export.from_torch(torch.nn.Embedding(3, 5), torch.nn.LSTM(5, 5, batch_first=True), None,
                        vocab, target)
  assert sorted(os.listdir(target)) == [lock.LOCK_FILE]
  leftover = tmp_path / 'run' / 'checkpoints' / '5.orbax-checkpoint-tmp-1'
  leftover.mkdir(parents=True)
  workdir_lib.Checkpoints(str(tmp_path / 'run'), 2).close()  # no lock held: left alone
  assert leftover.exists()
  with lock.holding(str(tmp_path / 'run'), 'training'):
    workdir_lib.Checkpoints(str(tmp_path / 'run'), 2).close()
  assert not leftover.exists()


# ------------------------------------------------------------------------------------------------
# A run's own files: config.json, dataset.json and vocab.json, checked against checksums.json


def _swap_two_tokens(workdir):
  path = os.path.join(workdir, 'vocab.json')
  vocab = json.load(open(path))
  vocab['itos'][5], vocab['itos'][6] = vocab['itos'][6], vocab['itos'][5]
  json.dump(vocab, open(path, 'w'), indent=2)


def _one_token_short(workdir):
  path = os.path.join(workdir, 'vocab.json')
  vocab = json.load(open(path))
  vocab['itos'].pop()
  json.dump(vocab, open(path, 'w'), indent=2)


def _edit(name, key, value):
  def edit(workdir):
    path = os.path.join(workdir, name)
    saved = json.load(open(path))
    node = saved
    *parents, last = key.split('.')
    for part in parents:
      node = node[part]
    node[last] = value
    json.dump(saved, open(path, 'w'), indent=2, sort_keys=True)
  return edit


RUN_FILE_DAMAGES = {
    'vocab.json two tokens swapped': ('vocab.json', 'changed', _swap_two_tokens),
    'vocab.json one token short': ('vocab.json', 'changed', _one_token_short),
    'vocab.json truncated': ('vocab.json', 'changed', lambda w: truncate([f'{w}/vocab.json'])),
    'vocab.json deleted': ('vocab.json', 'missing', lambda w: os.remove(f'{w}/vocab.json')),
    'dataset.json edited': ('dataset.json', 'changed', _edit('dataset.json', 'vocab_size', 60)),
    'dataset.json deleted': ('dataset.json', 'missing',
                             lambda w: os.remove(f'{w}/dataset.json')),
    'config.json edited': ('config.json', 'changed', _edit('config.json', 'model.hidden_size', 32)),
    'config.json deleted': ('config.json', 'missing', lambda w: os.remove(f'{w}/config.json')),
}


@pytest.mark.parametrize('damage', RUN_FILE_DAMAGES)
def test_a_changed_or_deleted_run_file_is_refused_naming_it(copy_of, damage):
  """load_run (what train.evaluate, train.sample and train.export read a run with) and a resumed
  run (with the config edited into the file, for config.json) refuse it in one line naming the
  file, and nothing is written: a deleted config.json is not written again."""
  import train
  name, kind, make = RUN_FILE_DAMAGES[damage]
  make(copy_of)
  before = listing(copy_of)
  path = os.path.join(copy_of, name)
  expected = (f'^{path} is missing \\(the run wrote it: checksums.json lists it\\); restore it '
              'from a copy of the run$' if kind == 'missing' else
              f'^{path} was changed after the run wrote it \\(its sha256 is not the one in '
              'checksums.json: edited, truncated or replaced\\); restore it from a copy of the run$')
  with pytest.raises(faults.RunFault, match=expected):
    train.load_run(copy_of)
  resumed = tiny_config(num_train_steps=40, **{'model.hidden_size': 32 if 'config' in name else 16})
  with pytest.raises(faults.RunFault, match=expected):
    trainer.train_and_evaluate(resumed, copy_of)
  assert listing(copy_of) == before


def test_the_tools_refuse_a_changed_vocabulary_in_one_line(copy_of):
  _swap_two_tokens(copy_of)
  for tool in ('train.sample', 'train.evaluate'):
    error = assert_reported(run_tool(tool, f'--workdir={copy_of}'))
    assert error.startswith(f'{copy_of}/vocab.json was changed after the run wrote it'), error


def test_runs_written_before_checksums_still_load(copy_of):
  """No checksums.json (every committed run under results/, and workdirs of earlier versions):
  nothing to check against, and a deleted config.json beside checkpoints is still not replaced.
  Files that name fields as versions before the renames did (config.json's task, num_steps and
  optimizer.loss_reduction; dataset.json's and results.json's task): the run loads, evaluates to
  the figure it reported and resumes, and its config.json is then written with today's names."""
  import train
  from train import evaluate
  os.remove(os.path.join(copy_of, 'checksums.json'))
  write_old_names(copy_of)
  reported = json.load(open(os.path.join(copy_of, 'results.json')))
  run = train.load_run(copy_of)
  assert run.step == STEPS and run.dataset.name == run.config.dataset == 'ptb_char'
  assert evaluate.evaluate_run(run, 'valid')['metrics'] == reported['valid']
  resumed = trainer.train_and_evaluate(tiny_config(num_train_steps=STEPS + 10), copy_of)
  assert (resumed['status'], resumed['step'], resumed['dataset']) == ('completed', STEPS + 10,
                                                                      'ptb_char')
  saved = json.load(open(os.path.join(copy_of, 'config.json')))
  assert saved['dataset'] == 'ptb_char' and saved['bptt_length'] == 10 and 'task' not in saved
  os.remove(os.path.join(copy_of, 'checksums.json'))  # written by the resumed run
  committed = sorted(glob.glob(os.path.join(ROOT, 'results', '**', 'config.json'),
                              recursive=True))
  assert len(committed) > 100
  for path in committed:
    checksums.verify(os.path.dirname(path), ['config.json', 'dataset.json', 'vocab.json'])
  assert workdir_lib.read_config(os.path.dirname(committed[-1])).model.hidden_size > 0
  os.remove(os.path.join(copy_of, 'config.json'))
  with pytest.raises(trainer.ConfigError, match=f'^{copy_of} holds checkpoints but no '
                                                'config.json, so the run they belong to is'):
    trainer.train_and_evaluate(tiny_config(**{'model.hidden_size': 32}), copy_of)
  assert not os.path.exists(os.path.join(copy_of, 'config.json'))


def test_checksums_survive_a_crash_between_their_writes(tmp_path):
  """The file and its checksum are replaced in three writes; killed between any two, each file
  matches a listed sum, and afterwards only the new sums are listed."""
  code = f"""
import os, sys
from train import checksums, files
workdir = {str(tmp_path)!r}
checksums.write(workdir, {{'config.json': 'old\\n'}})
_write = files.atomic_write
calls = []
def atomic_write(path, write):
  calls.append(path)
  if len(calls) == int(sys.argv[1]):
    os._exit(9)
  _write(path, write)
files.atomic_write = atomic_write
checksums.write(workdir, {{'config.json': 'new\\n'}})
"""
  for crash_at in (1, 2, 3, 4):
    for name in ('config.json', 'checksums.json'):
      if os.path.exists(tmp_path / name):
        os.remove(tmp_path / name)
    result = subprocess.run([sys.executable, '-c', code, str(crash_at)], cwd=ROOT, timeout=60)
    assert result.returncode == (9 if crash_at < 4 else 0)
    checksums.verify(str(tmp_path), ['config.json'])
  assert json.load(open(tmp_path / 'checksums.json')) == {
      'config.json': [hashlib.sha256(b'new\n').hexdigest()]}


def test_no_process_of_a_run_reads_the_files_process_0_is_halfway_through_writing(tmp_path,
                                                                                monkeypatch):
  """Two processes as threads: process 0 writes config.json and dataset.json (checksums.json
  first, listing files not yet written, then the files) while process 1 reads them to check
  them. Process 1 reads as soon as process 0 is halfway through (or after 2 s): it must never see
  the half-written state and take the run for a damaged one."""
  import threading
  from train import files
  local = threading.local()
  halfway = threading.Event()
  barrier = threading.Barrier(2, timeout=30)
  monkeypatch.setattr(workdir_lib.jax, 'process_count', lambda: 2)
  monkeypatch.setattr(workdir_lib.jax, 'process_index', lambda: local.index)
  monkeypatch.setattr(workdir_lib.multihost_utils, 'sync_global_devices',
                      lambda name: barrier.wait())
  atomic_write, verify = files.atomic_write, checksums.verify

  def slow_write(path, write):
    atomic_write(path, write)
    if local.index == 0 and path.endswith(checksums.CHECKSUMS) and not halfway.is_set():
      halfway.set()
      time.sleep(0.5)

  def waiting_verify(workdir, names):
    if local.index == 1:
      halfway.wait(2)
    verify(workdir, names)

  monkeypatch.setattr(files, 'atomic_write', slow_write)
  monkeypatch.setattr(checksums, 'verify', waiting_verify)
  config = tiny_config()
  from train import data
  dataset = data.load_dataset(config)
  errors = {}

  def process(index):
    local.index = index
    try:
      workdir_lib.record_config(str(tmp_path), config.to_json_best_effort())
      workdir_lib.record_dataset(str(tmp_path), dataset)
    except Exception as e:  # noqa: BLE001 - reported below
      errors[index] = e
  threads = [threading.Thread(target=process, args=(i,)) for i in (0, 1)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(60)
  assert not errors, errors
  assert halfway.is_set()
  verify(str(tmp_path), ['config.json', 'dataset.json', 'vocab.json'])


# ------------------------------------------------------------------------------------------------
# Records: a finished run, a torn line


def test_a_finished_run_is_left_alone_and_a_torn_record_is_cut_back(copy_of, reference):
  before = listing(copy_of)
  metrics = open(os.path.join(copy_of, 'metrics.jsonl')).read()
  again = run_main(copy_of)
  assert_reported(again, status=0)
  assert (f'the run in {copy_of} is finished (completed at step 30): nothing to do, nothing '
          'written') in again.stderr
  assert listing(copy_of) == before
  assert open(os.path.join(copy_of, 'metrics.jsonl')).read() == metrics
  with open(os.path.join(copy_of, 'metrics.jsonl'), 'a') as f:
    f.write('{"step": 35, "split": "train", "lo')  # a crash in the middle of a record
  resumed = run_main(copy_of, '--config.num_train_steps=40')
  assert_reported(resumed, status=0)
  assert (f'{copy_of}/metrics.jsonl: its last line was cut off mid-write (a crash); cut back to '
          f'the {len(records(reference))} complete records') in resumed.stderr
  steps = [(r['step'], r['split']) for r in records(copy_of)]
  assert steps[:len(records(reference))] == [(r['step'], r['split']) for r in records(reference)]
  assert len(steps) == len(set(steps)) and steps[-1] == (40, 'test')


# ------------------------------------------------------------------------------------------------
# Signals

SIGINT_IN_FIRST_COMPILE = """
import os, signal
from train import trainer
_make = trainer.make_train_step
def make_train_step(*args, **kwargs):
  step = _make(*args, **kwargs)
  def train_step(*a):
    if not getattr(train_step, 'traced', False):  # runs while jax traces it, before it compiles
      train_step.traced = True
      os.kill(os.getpid(), signal.SIGINT)
    return step(*a)
  return train_step
trainer.make_train_step = make_train_step
"""
SIGHUP_AT_STEP_15 = """
import os, signal
from train import trainer
_log = trainer._log_train
def _log_train(step, *args):
  _log(step, *args)
  if step == 15:
    os.kill(os.getpid(), signal.SIGHUP)
trainer._log_train = _log_train
"""
SIGINT_TWICE_AT_SAVE_20 = """
import os, signal
from train import workdir as workdir_lib
_save = workdir_lib.Checkpoints.save
def save(self, step, state, meta):
  if step == 20:
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGINT)
  return _save(self, step, state, meta)
workdir_lib.Checkpoints.save = save
"""


def test_ctrl_c_and_sighup_stop_with_a_checkpoint_and_a_second_ctrl_c_at_once(tmp_path, reference):
  workdir = str(tmp_path / 'run')
  leftovers = lambda: glob.glob(os.path.join(workdir, '*', '*.orbax-checkpoint-tmp*'))
  results = lambda: json.load(open(os.path.join(workdir, 'results.json')))

  compiling = run_main(workdir, prelude=SIGINT_IN_FIRST_COMPILE)
  assert_reported(compiling, status=0)
  assert 'SIGINT received: saving a checkpoint and stopping' in compiling.stderr
  assert results() == {'dataset': 'ptb_char', 'status': 'preempted', 'step': 1}
  assert saved_steps(workdir) == [1] and leftovers() == []

  hung_up = run_main(workdir, prelude=SIGHUP_AT_STEP_15)
  assert_reported(hung_up, status=0)
  assert 'SIGHUP received: saving a checkpoint and stopping' in hung_up.stderr
  assert results() == {'dataset': 'ptb_char', 'status': 'preempted', 'step': 15}
  assert saved_steps(workdir) == [10, 15] and leftovers() == []  # keep_checkpoints=2

  interrupted = run_main(workdir, prelude=SIGINT_TWICE_AT_SAVE_20)
  error = assert_reported(interrupted, status=130)
  assert error == ('interrupted again: stopped at once, without a checkpoint of this step; the '
                   'earlier checkpoints are kept (rerun the same command to resume)')
  assert saved_steps(workdir) == [10, 15]

  resumed = run_main(workdir)
  assert_reported(resumed, status=0)
  assert f'resumed from step 15 in {workdir}' in resumed.stderr
  assert_same_params(workdir, reference, STEPS)
  assert leftovers() == []


# ------------------------------------------------------------------------------------------------
# The command-line tools' output, their device memory, a loss that grows


def test_a_closed_pipe_ends_quietly_and_a_full_output_is_one_line(copy_of):
  """train.sample whose reader has gone away (`| head -c 10` that has read its 10 bytes) before
  it writes; train.evaluate > /dev/full."""
  sample = subprocess.Popen([sys.executable, '-m', 'train.sample', f'--workdir={copy_of}'],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, JAX_PLATFORMS='cpu'))
  sample.stdout.close()  # the only reader
  stderr = sample.stderr.read().decode()
  sample.wait(timeout=300)
  assert 'Traceback' not in stderr and 'Error' not in stderr, stderr
  assert sample.returncode == 141, stderr
  with open('/dev/full', 'w') as full:
    error = assert_reported(run_tool('train.evaluate', f'--workdir={copy_of}', stdout=full))
  assert error == 'could not write to standard output: [Errno 28] No space left on device'


def test_out_of_memory_in_sample_is_one_line(reference):
  """100,000,000 samples at once, in a process limited to 16 GB of address space (the CPU's
  memory standing in for a device's)."""
  limit = 16 * 2 ** 30
  result = subprocess.run(
      [sys.executable, '-m', 'train.sample', f'--workdir={reference}', '--num_samples=100000000'],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS='cpu'),
      preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
  error = assert_reported(result)
  assert re.fullmatch(r'out of memory on the device \(.*Out of memory allocating \d+ bytes.*\) for '
                      r'100,000,000 samples \(--num_samples\) of 1 \+ 200 tokens and 4,962 '
                      r'parameters; use a smaller --num_samples \(the samples are drawn together, '
                      r'in one batch\)', error), error


def test_a_loss_that_grows_a_hundredfold_ends_diverged_while_finite(tmp_path):
  """learning_rate=1e9: the loss stays finite but grows past DIVERGENCE_FACTOR (100) times its
  value at step 1, which ends the run as diverged."""
  workdir = str(tmp_path / 'run')
  error = assert_reported(run_main(workdir, '--config.optimizer.learning_rate=1e9'))
  match = re.fullmatch(r'loss (\S+) at step (\d+) is more than 100 times the loss at step 1 '
                       rf'\((\S+)\): the run diverged and stopped. No checkpoint was saved in '
                       rf'{workdir} before it.', error)
  assert match, error
  loss, step, first = float(match[1]), int(match[2]), float(match[3])
  assert math.isfinite(loss) and loss > trainer.DIVERGENCE_FACTOR * first and step <= 5
  results = json.load(open(os.path.join(workdir, 'results.json')))
  assert results['status'] == 'diverged' and results['step'] == step


# ------------------------------------------------------------------------------------------------
# Sweeps: a killed sweep's points, a busy point or sweep directory, a point whose config changed

SWEEP_CONFIG = """
import sys
sys.path.insert(0, {root!r})
from tests.trainer_utils import tiny_config

def get_config(arg=None):
  return tiny_config()

def get_sweep(arg=None):
  return {{'axes': {{'model.hidden_size': [16]}}, 'seeds': [0]}}
"""
# Imported by every Python process of the sweep (PYTHONPATH): in main.py, the gate of
# GATE_AT_EVALUATION.
SITECUSTOMIZE = """
import os
if b'main.py' in b' '.join(open('/proc/self/cmdline', 'rb').read().split(bytes(1))):
""" + ''.join(f'  {line}\n' for line in GATE_AT_EVALUATION.strip().splitlines())


def alive(pid):
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().split(') ')[1][0] != 'Z'
  except FileNotFoundError:
    return False


def test_a_killed_sweep_stops_its_points_and_a_rerun_never_runs_one_twice(tmp_path, reference):
  config = tmp_path / 'sweep_config.py'
  config.write_text(SWEEP_CONFIG.format(root=ROOT))
  hook, gate = tmp_path / 'hook', str(tmp_path / 'gate')
  hook.mkdir()
  (hook / 'sitecustomize.py').write_text(SITECUSTOMIZE.format(gate=gate))
  sweep_dir = str(tmp_path / 'sweep')
  point = os.path.join(sweep_dir, 'hidden_size=16,seed=0')
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=f'{hook}:{ROOT}')
  command = [sys.executable, '-m', 'train.sweep', f'--config={config}', f'--sweep_dir={sweep_dir}']
  sweep = lambda *flags: subprocess.run(command + list(flags), cwd=ROOT, env=env, timeout=300,
                                        capture_output=True, text=True)
  description = lambda: open(os.path.join(sweep_dir, 'sweep.json')).read()

  first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
  wait_for(gate + '.reached', first)  # the point is at step 15
  pid = lock_record(point)['pid']
  first.kill()
  first.wait()
  # The point lives on (held at the gate, with SIGTERM received); a rerun does not start it.
  rerun = sweep()
  assert rerun.returncode == 1 and alive(pid), rerun.stderr
  assert (f'in use hidden_size=16,seed=0: not started, its workdir is in use by pid {pid} on '
          'host ') in rerun.stderr
  open(gate + '.open', 'w').close()
  start = time.time()
  while alive(pid):
    assert time.time() - start < 120, 'the point outlived its sweep'
    time.sleep(0.1)
  assert json.load(open(os.path.join(point, 'results.json'))) == {
      'dataset': 'ptb_char', 'status': 'preempted', 'step': 15}
  assert 'SIGTERM received: saving a checkpoint' in open(os.path.join(point, 'log.txt')).read()

  # A second sweep while one holds the sweep directory: refused before it writes sweep.json.
  written = description()
  with held_by_another_process(sweep_dir, 'sweep') as holder:
    busy = sweep()
  assert busy.returncode == 1 and f'error: {sweep_dir} is in use by pid {holder}' in busy.stderr
  assert description() == written

  resumed = sweep()
  assert resumed.returncode == 0, resumed.stderr
  assert f'resumed from step 15 in {point}' in open(os.path.join(point, 'log.txt')).read()
  assert_same_params(point, reference, STEPS)
  steps = [(r['step'], r['split']) for r in records(point)]
  assert len(steps) == len(set(steps)) and steps[-1] == (30, 'test')

  # The same sweep with another num_train_steps: the finished point is not taken as its run.
  written = description()
  changed = sweep('--config.num_train_steps=40')
  assert changed.returncode == 1
  assert changed.stderr.strip().splitlines()[-1] == (
      'error: point hidden_size=16,seed=0 finished with another config than the sweep\'s now '
      '(config.num_train_steps: the run has 30, the sweep now 40); pass --changed_points=rerun to '
      'train such points again (their workdirs are kept as <name>.replaced), or '
      '--changed_points=accept to count them finished as they are')
  assert description() == written
  accepted = sweep('--config.num_train_steps=40', '--changed_points=accept')
  assert accepted.returncode == 0 and 'counted finished (--changed_points=accept)' in \
      accepted.stderr
  assert json.load(open(os.path.join(point, 'results.json')))['step'] == 30
  again = sweep('--config.num_train_steps=40', '--changed_points=rerun')
  assert again.returncode == 0, again.stderr
  assert json.load(open(os.path.join(point, 'results.json')))['step'] == 40
  assert json.load(open(os.path.join(point + '.replaced', 'results.json')))['step'] == 30
