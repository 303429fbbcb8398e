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
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from tests.trainer_utils import ROOT, assert_same_params, run_main, tiny_config
from train import checkpoint, faults, trainer
from train.checkpoint import saved_steps

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
from train import checkpoint
_save = checkpoint.Checkpoints.save
def save(self, step, state, meta):
  if step == 20:
    fill({directory!r})
  return _save(self, step, state, meta)
checkpoint.Checkpoints.save = save
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
  assert error == f'could not write {copy_of}/config.json: [Errno {code}] {os.strerror(code)}'
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
  (tmp_path / 'config.json').write_text('{"task": "ptb_ch')
  with pytest.raises(trainer.ConfigError, match=f'^{tmp_path}/config.json is not readable JSON'):
    trainer.train_and_evaluate(tiny_config(), str(tmp_path))
  assert os.listdir(tmp_path) == ['config.json']


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
  assert results == {'task': 'ptb_char', 'status': 'preempted', 'step': 15}
  assert saved_steps(workdir) == [10, 15]
  records = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert {'step': 15, 'split': 'valid'}.items() <= records[-1].items()  # it ended first

  killed = run_main(workdir, prelude=KILL_BEFORE_COMMIT)  # saving step 20
  assert killed.returncode == -signal.SIGKILL, killed.stderr
  assert saved_steps(workdir) == [10, 15] and len(unfinished()) == 1

  killed = run_main(workdir, prelude=KILL_BEFORE_DELETING_OLD)  # 20 saved, 10 due to go
  assert killed.returncode == -signal.SIGKILL, killed.stderr
  assert saved_steps(workdir) == [10, 15, 20] and unfinished() == []

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
      r'parameters; use a smaller config.batch_size or config.num_steps, '
      r'config.model.remat=True, or config.model.scan_layers=True for a deep stack', error), error
  results = json.loads(open(os.path.join(tmp_path, 'run', 'results.json')).read())
  assert results == {'task': 'ptb_char', 'status': 'failed', 'message': error}


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
  ckpts = checkpoint.Checkpoints(workdir, keep)
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
  ckpts = checkpoint.Checkpoints(str(tmp_path), 3)
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
    ckpts = checkpoint.Checkpoints(str(tmp_path), 2)
    assert ckpts.restore(_abstract(_state(0)))[1] == {'step': 20}
    ckpts.save(30, _state(30), {'step': 30})
    ckpts.close()
  ckpts = checkpoint.Checkpoints(str(tmp_path), 2)
  ckpts.save(40, _state(40), {'step': 40})
  assert ckpts.manager.all_steps() == [30, 40]
  assert ckpts.restore(_abstract(_state(0)))[1] == {'step': 40}
  ckpts.close()
  assert sorted(os.listdir(root)) == ['30', '30.damaged', '30.damaged.2', '40']


def test_a_damaged_best_checkpoint_is_set_aside(tmp_path):
  ckpts = checkpoint.Checkpoints(str(tmp_path), 2)
  ckpts.save_best(15, _state(15), {'loss': 1.5})
  assert ckpts.best_valid(_abstract(_state(0))) == {'loss': 1.5}
  ckpts.close()
  truncate(data_files(str(tmp_path), 'best', 15))
  ckpts = checkpoint.Checkpoints(str(tmp_path), 2)
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
