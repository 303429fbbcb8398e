"""Pieces every config uses: the core fields with their defaults, and big_vision-style arguments.

`parse_arg('layers=4,between=relu,full')` -> {'layers': 4, 'between': 'relu', 'full': True}.
"""
from __future__ import annotations

import ast
import functools
from typing import Any, Callable, Optional

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


def choice(arg: str | None, options, default: str, config: str) -> str:
  """The argument of a config file whose argument names one of `options` (`ptb` in
  `configs/study.py:ptb`), `default` when it is empty; a ValueError naming `config` and the
  options otherwise."""
  name = (arg or default).strip()
  if name not in options:
    raise ValueError(f'{config}:{name} is not known; use one of {", ".join(options)}')
  return name


def field(config, dotted: str):
  """The value of the field `dotted` ('model.num_layers') of `config`; KeyError, AttributeError or
  TypeError where `config` has no such field."""
  return functools.reduce(lambda node, part: node[part], dotted.split('.'), config)


def _renamed(new: str) -> tuple[Callable, Callable]:
  """The LEGACY entry of a field whose only change is its name: today's `new`."""
  return (lambda value, _: {new: value}), (lambda config: field(config, new))


# The generated datasets whose split sizes configs once gave as data.num_train / num_valid /
# num_test (until each dataset's parameters moved to their own sub-dict config.data.<dataset>,
# in git commit 692a8ff): the dataset the config named read them, and no other dataset read them.
_SIZED = ('speech_digits', 'copy', 'adding')


def _split_size(split: str) -> tuple[Callable, Callable]:
  """The LEGACY entry of data.num_<split>: config.data.<dataset>.num_<split> of the config's own
  dataset; nothing for a dataset that never read it (a language model's, where it had no
  effect)."""
  def upgrade(size, fields):  # a config that names no dataset has the default one
    dataset = fields.get('dataset', base_config().dataset)
    return {f'data.{dataset}.num_{split}': size} if dataset in _SIZED else {}
  return upgrade, lambda config: (config.data[config.dataset][f'num_{split}']
                                  if config.dataset in _SIZED else None)


# Fields that older configs, run directories and command lines spell differently: each with (a
# function giving today's fields for a value of it and the config's fields by today's names,
# dotted; a function reading its value back from today's config).
LEGACY = {
    'model.residual': (lambda on, _: {'model.block': 'residual_op_on_skip'} if on else {},
                       lambda config: config.model.block == 'residual_op_on_skip'),
    'task': _renamed('dataset'),
    'num_steps': _renamed('bptt_length'),
    'optimizer.loss_reduction': _renamed('loss_reduction'),
    'data.num_train': _split_size('train'),
    'data.num_valid': _split_size('valid'),
    'data.num_test': _split_size('test'),
}


def upgrade(flat: dict[str, Any], within: Optional[dict[str, Any]] = None) -> dict[str, Any]:
  """`flat` (dotted field -> value) with every legacy field replaced, in its place, by today's
  fields; a value given for today's field itself wins. `within`: the dotted fields of the config
  that `flat` overrides, where a legacy field's meaning depends on another field (data.num_train
  on the dataset)."""
  context = {**(within or {}), **flat}
  for _ in range(2):  # the second pass reads the other fields by today's names
    result = {}
    for key, value in flat.items():
      if key not in LEGACY:
        result[key] = value
        continue
      for new_key, new_value in LEGACY[key][0](value, context).items():
        if new_key not in flat:
          result[new_key] = new_value
    context = {**(within or {}), **result}
  return result


def read_legacy(config, key: str):
  """The value of legacy field `key` (dotted) that `config`, a config of today, amounts to."""
  return LEGACY[key][1](config)


def base_config() -> ml_collections.ConfigDict:
  """The fields every config has, with canonical defaults (h straight up, tanh/sigmoid, forget
  bias 1). Experiment configs change what they need."""
  c = ml_collections.ConfigDict()
  c.dataset = 'ptb_char'        # the data: a name in train.data.DATASETS
  c.seed = 0                    # parameters, dropout and data order
  c.num_train_steps = 1000      # the run's length (unless num_epochs > 0)
  c.num_epochs = 0.0            # > 0: train this many epochs instead of num_train_steps
  c.loss_reduction = 'token'    # token: mean over tokens | sequence: sum over time, mean over rows
  c.batch_size = 32             # rows per training batch, over all devices
  c.eval_batch_size = config_dict.placeholder(int)  # None: batch_size
  c.bptt_length = 64            # time steps per training row of a language model: the truncated
                                # BPTT length
  c.eval_every_steps = 500      # validation every this many steps
  c.checkpoint_every_steps = 500  # a checkpoint every this many steps
  c.keep_checkpoints = 2        # the newest checkpoints kept
  c.log_every_steps = 50        # a training record (interval means) every this many steps
  c.stop_after_steps = 0        # > 0: checkpoint and stop after this many steps of this run
  c.distributed = False         # call jax.distributed.initialize() (multi-process runs)
  c.keep_freed_memory = True    # CPU: malloc keeps freed memory, no page faults each step (lstm.memory)

  d = c.data = ml_collections.ConfigDict()
  # Language models (ptb_char, ptb_word, text)
  d.max_train_tokens = config_dict.placeholder(int)  # cut the train stream (quick runs)
  d.max_eval_tokens = config_dict.placeholder(int)   # cut the valid and test streams
  d.document_separator = config_dict.placeholder(str)  # documents end with it: state reset after
  # dataset 'text': a plain-text file of the user's
  d.path = config_dict.placeholder(str)        # the file (required for dataset 'text')
  d.level = 'char'                             # char | word (whitespace, <eos> per line) | byte
  d.valid_path = config_dict.placeholder(str)  # a file for valid; else cut from the end of path
  d.test_path = config_dict.placeholder(str)   # a file for test; else cut from the end of path
  d.valid_fraction = 0.05                      # of path cut for valid (without valid_path)
  d.test_fraction = 0.05                       # of path cut for test (without test_path)
  d.encoding = 'utf-8'                         # of the files (not used at byte level)
  d.max_vocab = config_dict.placeholder(int)   # word level: the most frequent words; rest <unk>
  d.cache = True                               # char/word ids kept on disk, memory-mapped later
  d.cache_dir = config_dict.placeholder(str)   # None: $STACKED_LSTM_CACHE or ~/.cache/...
  d.allow_changed_data = False                 # resume although a data file's contents changed
  # Generated datasets: each dataset's parameters in its own sub-dict
  d.mnist1d = ml_collections.ConfigDict(dict(
      seed=42,           # the package's own seed: the published dataset
      num_samples=5000,  # split 4:1 into train and test
      valid_size=500))   # the last train examples, held out for validation
  d.digits = ml_collections.ConfigDict(dict(
      seed=0,            # the permutation that splits sklearn's 1,797 digits
      test_size=250,
      valid_size=250))
  d.copy = ml_collections.ConfigDict(dict(
      delay=100,                  # T: blanks between the symbols and the recall
      loss_on_recall_only=False,  # count the loss on the 10 recall steps only
      num_train=10000, num_valid=1000, num_test=1000,
      seed=0))
  d.adding = ml_collections.ConfigDict(dict(
      seq_len=100,                # T
      num_train=10000, num_valid=1000, num_test=1000,
      seed=0))
  sd = d.speech_digits = ml_collections.ConfigDict()
  sd.num_train = 2000
  sd.num_valid = 200
  sd.num_test = 300
  sd.min_digits = 1              # digits per utterance
  sd.max_digits = 5
  sd.seed = 0
  sd.num_mels = 40               # log-mel channels per frame
  sd.energy = False              # add the frame's log energy
  sd.deltas = 0                  # orders of delta coefficients: 0, 1 or 2
  sd.normalize = True            # per-utterance mean and variance normalisation
  sd.subsample = 3               # frames stacked into one step
  sd.voices = config_dict.placeholder(str)       # train/valid voices, comma-separated
  sd.test_voices = config_dict.placeholder(str)  # held-out test voices, comma-separated
  sd.valid_voices = config_dict.placeholder(str)  # None: valid hears the train/valid voices
  sd.rate_jitter = 0.15          # speaking rate 175 words/min times 1 +- this
  sd.pitch_jitter = 15           # pitch 50 +- this (espeak's 0..100)
  sd.cache_dir = config_dict.placeholder(str)    # None: $STACKED_LSTM_CACHE or ~/.cache/...

  m = c.model = ml_collections.ConfigDict()
  m.num_layers = 2              # LSTM layers in the stack
  m.hidden_size = 256           # units per layer (per direction)
  m.embed_size = 0              # 0: hidden_size
  m.between = 'none'            # op on a block's branch input: none | an activation | layernorm | rmsnorm
  m.block = 'plain'             # layers 2..L: plain | residual | residual_op_on_skip | prenorm | postnorm
  m.norm = 'layernorm'          # the norm of prenorm/postnorm blocks: layernorm | rmsnorm
  m.ffn_factor = 0.0            # > 0: a feed-forward sublayer of this many times the width per block
  m.ffn_activation = 'gelu'     # the feed-forward sublayer's activation
  m.ffn_gated = False           # a gated feed-forward sublayer (xLSTM's gated MLP)
  m.activation = 'tanh'         # the cell's candidate and output activation (Keras' argument)
  m.recurrent_activation = 'sigmoid'  # the gates' activation
  m.forget_bias = 1.0           # initial bias of the forget gate
  m.dropout = 0.0               # between layers
  m.embed_dropout = 0.0         # language models: on the embedding
  m.output_dropout = 0.0        # language models: on the last layer's output
  m.variational = False         # one dropout mask per sequence (locked dropout)
  m.bidirectional = False       # a backward direction in every layer
  m.reverse = False             # the (forward) direction reads each sequence from its end
  m.use_bias = True             # the gates have a bias
  m.layer_norm_epsilon = 1e-5   # of the cell's own layer norm
  m.peephole = False            # peephole connections from c to the gates
  m.layer_norm = False          # layer norm inside the cell (gates and c)
  m.candidate_activation = config_dict.placeholder(str)  # None: activation; 'linear': NIAF
  m.output_activation = config_dict.placeholder(str)     # None: activation; 'linear': NOAF
  m.input_gate = True           # False: i = 1 (Greff's NIG)
  m.forget_gate = True          # False: f = 1 (NFG)
  m.output_gate = True          # False: o = 1 (NOG)
  m.coupled_gates = False       # i = 1 - f (CIFG)
  m.recurrent_dropout = 0.0     # on h_{t-1} into the recurrent kernel, one mask per sequence
  m.zoneout_cell = 0.0          # probability that a unit of c keeps its previous value
  m.zoneout_hidden = 0.0        # the same for h
  m.weight_drop = 0.0           # DropConnect on the recurrent kernel, one mask per batch
  m.proj_size = config_dict.placeholder(int)    # LSTMP: h projected to this width
  m.cell_clip = config_dict.placeholder(float)  # clip c to +- this
  m.proj_clip = config_dict.placeholder(float)  # clip the projected h to +- this
  m.tie_embeddings = False      # language models: the softmax uses the embedding matrix
  m.bilm = False                # language models: ELMo's forward + backward pair
  m.init_scale = 0.0            # > 0: every weight U(-init_scale, init_scale), as Zaremba
  m.pooling = 'last'            # sequence classifiers: last | mean over valid steps
  m.scan_layers = False         # nn.scan over identical layers (compile time of deep stacks)
  m.remat = False               # recompute each layer in the backward pass (memory)
  m.dtype = 'float32'           # compute dtype: float32 | bfloat16 | float16 (parameters float32)

  o = c.optimizer = ml_collections.ConfigDict()
  o.name = 'adam'               # sgd | momentum | adam | adamw | adagrad
  o.learning_rate = 2e-3        # the peak rate of the schedule
  o.schedule = 'constant'       # constant | step | cosine
  o.warmup_steps = 0            # cosine schedule: linear warm-up steps
  o.decay_start_epoch = 0       # step schedule: decay once per epoch from this epoch on
  o.decay_factor = 0.5          # step schedule: the rate's factor per epoch
  o.end_factor = 0.0            # cosine schedule: the final rate is learning_rate * end_factor
  o.momentum = 0.9              # momentum
  o.nesterov = False            # momentum: Nesterov's form
  o.b1 = 0.9                    # adam, adamw
  o.b2 = 0.999                  # adam, adamw
  o.eps = 1e-8                  # adam, adamw
  o.weight_decay = 1e-4         # adamw
  o.initial_accumulator = 0.1   # adagrad
  o.grad_clip_norm = 1.0        # clip the global gradient norm (0: no clipping)
  return c
