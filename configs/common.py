"""Pieces every config uses: the core fields with their defaults, and big_vision-style arguments.

`parse_arg('layers=4,between=relu,full')` -> {'layers': 4, 'between': 'relu', 'full': True}.
"""
from __future__ import annotations

import ast

import ml_collections
from ml_collections import config_dict


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses 'key=value,flag' into a ConfigDict; keys must be among `defaults`."""
  result = dict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, _, value = item.partition('=')
    key = key.strip()
    if key not in defaults:
      raise ValueError(f'config argument {key!r} is not known; valid: {", ".join(defaults)}')
    if not _:
      result[key] = True
      continue
    try:
      result[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      result[key] = value
  return ml_collections.ConfigDict(result)


def base_config() -> ml_collections.ConfigDict:
  """The fields every config has, with canonical defaults (h straight up, tanh/sigmoid, forget
  bias 1). Experiment configs change what they need."""
  c = ml_collections.ConfigDict()
  c.task = 'ptb_char'
  c.seed = 0
  c.num_train_steps = 1000
  c.num_epochs = 0.0            # > 0: train this many epochs instead of num_train_steps
  c.batch_size = 32
  c.eval_batch_size = config_dict.placeholder(int)  # None: batch_size
  c.num_steps = 64              # time steps per batch (truncated BPTT length for language models)
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 2
  c.log_every_steps = 50
  c.stop_after_steps = 0        # > 0: checkpoint and stop after this many steps of this run
  c.distributed = False         # call jax.distributed.initialize() (multi-process runs)

  c.data = ml_collections.ConfigDict()
  c.data.path = config_dict.placeholder(str)
  c.data.max_train_tokens = config_dict.placeholder(int)
  c.data.max_eval_tokens = config_dict.placeholder(int)

  m = c.model = ml_collections.ConfigDict()
  m.num_layers = 2
  m.hidden_size = 256
  m.embed_size = 0              # 0: hidden_size
  m.between = 'none'
  m.activation = 'tanh'
  m.recurrent_activation = 'sigmoid'
  m.forget_bias = 1.0
  m.dropout = 0.0
  m.embed_dropout = 0.0
  m.output_dropout = 0.0
  m.variational = False
  m.residual = False
  m.bidirectional = False
  m.peephole = False
  m.layer_norm = False
  m.proj_size = config_dict.placeholder(int)
  m.cell_clip = config_dict.placeholder(float)
  m.proj_clip = config_dict.placeholder(float)
  m.tie_embeddings = False
  m.bilm = False                # language models: ELMo's forward + backward pair
  m.init_scale = 0.0            # > 0: every weight U(-init_scale, init_scale), as Zaremba
  m.pooling = 'last'
  m.scan_layers = False
  m.remat = False
  m.dtype = 'float32'

  o = c.optimizer = ml_collections.ConfigDict()
  o.name = 'adam'
  o.learning_rate = 2e-3
  o.schedule = 'constant'       # constant | step | cosine
  o.warmup_steps = 0
  o.decay_start_epoch = 0       # step schedule: decay once per epoch from this epoch on
  o.decay_factor = 0.5
  o.momentum = 0.9
  o.weight_decay = 1e-4
  o.grad_clip_norm = 1.0
  o.loss_reduction = 'token'    # token: mean over tokens | sequence: sum over time, mean over rows
  return c
