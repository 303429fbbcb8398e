"""Tiny configs and helpers shared by the trainer tests."""
import json
import os
import subprocess
import sys

import numpy as np

from configs import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DATA_FIELDS = {  # fields of config.data
    'ptb_char': dict(max_train_tokens=6000, max_eval_tokens=2000),
    'ptb_word': dict(max_train_tokens=6000, max_eval_tokens=2000),
    'mnist1d': {'mnist1d.num_samples': 600, 'mnist1d.valid_size': 100},
    'digits': dict(),
    'copy': {'copy.delay': 5, 'copy.num_train': 256, 'copy.num_valid': 64, 'copy.num_test': 64},
    'adding': {'adding.seq_len': 12, 'adding.num_train': 256, 'adding.num_valid': 64,
               'adding.num_test': 64},
    'speech_digits': {'speech_digits.num_train': 96, 'speech_digits.num_valid': 16,
                      'speech_digits.num_test': 16, 'speech_digits.max_digits': 3},
}


def set_field(config, key, value):
  """config[key] = value for a dotted key."""
  node = config
  *path, last = key.split('.')
  for part in path:
    node = node[part]
  node[last] = value


def tiny_config(dataset='ptb_char', **overrides):
  c = common.base_config()
  c.dataset = dataset
  for k, v in DATA_FIELDS.get(dataset, {}).items():
    set_field(c, f'data.{k}', v)
  c.model.hidden_size = 16
  c.model.embed_size = 8
  c.batch_size = 8
  c.bptt_length = 10
  c.num_train_steps = 30
  c.eval_every_steps = 15
  c.checkpoint_every_steps = 10
  c.log_every_steps = 5
  c.optimizer.learning_rate = 1e-2
  for key, value in overrides.items():
    set_field(c, key, value)
  return c


# The names that runs written before the renames gave today's fields and keys, per file of the
# workdir (dotted): what the tests of old runs write.
OLD_NAMES = {'config.json': {'dataset': 'task', 'bptt_length': 'num_steps',
                             'loss_reduction': 'optimizer.loss_reduction'},
             'dataset.json': {'name': 'task'},
             'results.json': {'dataset': 'task'}}


def write_old_names(workdir):
  """Rewrites the workdir's config.json, dataset.json and results.json (those it holds) as
  versions before the renames wrote them."""
  from train import files
  for name, renamed in OLD_NAMES.items():
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      flat = files.flatten(files.read_json(path))
      files.write_json(path, files.unflatten({renamed.get(k, k): v for k, v in flat.items()}),
                       sort_keys=True)


def flag_args(config_overrides):
  return [f'--config.{k}={v}' for k, v in config_overrides.items()]


# Runs main.py in the process that ran `prelude` (see run_main): its flags follow the script.
_RUN_MAIN = """
import runpy, sys
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def run_main(workdir, *flags, timeout=300, wait=True, prelude=None):
  """main.py on tests/tiny_config.py in a subprocess; `prelude`, Python code, runs first in the
  same process (e.g. to make a fault happen at a chosen point)."""
  main_py = os.path.join(ROOT, 'main.py')
  args = ['--config=' + os.path.join(ROOT, 'tests', 'tiny_config.py'), f'--workdir={workdir}',
          *flags]
  cmd = [sys.executable, main_py, *args] if prelude is None else [
      sys.executable, '-c', prelude + _RUN_MAIN, main_py, *args]
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  if not wait:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def load_params(workdir):
  """The parameters of the latest checkpoint in `workdir`, as a flat {path: numpy array}."""
  import jax
  from train import workdir as workdir_lib
  _, step, params = workdir_lib.restore_params(str(workdir))
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return step, {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


def assert_same_params(workdir, reference, step):
  """The latest checkpoints of both workdirs are at `step` and hold the same parameters."""
  step_a, params_a = load_params(reference)
  step_b, params_b = load_params(workdir)
  assert step_a == step_b == step
  assert params_a.keys() == params_b.keys()
  for key in params_a:
    np.testing.assert_allclose(params_b[key], params_a[key], rtol=1e-6, atol=1e-7, err_msg=key)


# Tiny trained runs of every kind of dataset, shared by the tests of trained runs (the `trained_run`
# fixture): name -> (dataset, overrides). 'byte' reads the files that `write_byte_corpus` writes.
SHORT = {'num_train_steps': 12, 'eval_every_steps': 4, 'checkpoint_every_steps': 6,
         'log_every_steps': 4}
RUNS = {
    'char': ('ptb_char', {}),
    'word': ('ptb_word', {'model.tie_embeddings': True, 'model.embed_size': 16}),
    'bilm': ('ptb_word', {'model.bilm': True, 'model.proj_size': 8, 'model.cell_clip': 3.0,
                          'model.proj_clip': 3.0, 'model.block': 'residual_op_on_skip'}),
    'byte': ('text', {'data.level': 'byte'}),
    'classify': ('digits', {'batch_size': 32}),
    'per_step': ('copy', {'batch_size': 32, 'model.num_layers': 1}),
    'regress': ('adding', {'batch_size': 32, 'model.num_layers': 1}),
    'ctc': ('speech_digits', {'batch_size': 16, 'model.bidirectional': True,
                              'model.peephole': True}),
}


def write_byte_corpus(directory):
  """(train file, valid file) of bytes for the 'byte' run: text with a few non-ASCII bytes."""
  train = os.path.join(directory, 'train.txt')
  valid = os.path.join(directory, 'valid.txt')
  with open(train, 'w', encoding='utf-8') as f:
    f.write('the quick brown fox jumps over the lazy dog; caf\u00e9 au lait\n' * 60)
  with open(valid, 'w', encoding='utf-8') as f:
    f.write('a lazy dog jumps over the quick brown fox\n' * 12)
  return train, valid


def run_config(name, directory):
  """The config of run `name` of RUNS; data files it needs go to `directory`."""
  dataset, overrides = RUNS[name]
  overrides = {**SHORT, **overrides}
  if name == 'byte':
    train, valid = write_byte_corpus(directory)
    overrides.update({'data.path': train, 'data.valid_path': valid, 'data.test_fraction': 0.2})
  return tiny_config(dataset, **overrides)


def read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]
