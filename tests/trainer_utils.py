"""Tiny configs and helpers shared by the trainer tests."""
import json
import os
import subprocess
import sys

import numpy as np

from configs import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TASK_DATA = {  # fields of config.data
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


def tiny_config(task='ptb_char', **overrides):
  c = common.base_config()
  c.task = task
  for k, v in TASK_DATA.get(task, {}).items():
    set_field(c, f'data.{k}', v)
  c.model.hidden_size = 16
  c.model.embed_size = 8
  c.batch_size = 8
  c.num_steps = 10
  c.num_train_steps = 30
  c.eval_every_steps = 15
  c.checkpoint_every_steps = 10
  c.log_every_steps = 5
  c.optimizer.learning_rate = 1e-2
  for key, value in overrides.items():
    set_field(c, key, value)
  return c


def flag_args(config_overrides):
  return [f'--config.{k}={v}' for k, v in config_overrides.items()]


def run_main(workdir, *flags, timeout=300, wait=True):
  cmd = [sys.executable, os.path.join(ROOT, 'main.py'), '--config=' + os.path.join(ROOT, 'tests', 'tiny_config.py'),
         f'--workdir={workdir}', *flags]
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  if not wait:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def load_params(workdir):
  """The parameters of the latest checkpoint in `workdir`, as a flat {path: numpy array}."""
  import orbax.checkpoint as ocp
  import jax
  path = os.path.join(workdir, 'checkpoints')
  step = max(int(d) for d in os.listdir(path) if d.isdigit())
  checkpointer = ocp.StandardCheckpointer()
  metadata = checkpointer.metadata(os.path.join(path, str(step), 'state')).item_metadata
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
  restored = {'state': checkpointer.restore(os.path.join(path, str(step), 'state'), target)}
  flat = jax.tree_util.tree_flatten_with_path(restored['state']['params'])[0]
  return step, {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


def read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]
