"""A trained language model to PyTorch and a PyTorch language model into a run directory.

  python -m train.export --workdir=DIR [--step=best|latest|N] --out=FILE.pt   # to PyTorch
  python -m train.export --from_torch=FILE.pt --workdir=NEWDIR                  # from PyTorch

`to_torch(run)` gives a `TorchLanguageModel`: `torch.nn.Embedding` -> `torch.nn.LSTM`
(batch_first, from `lstm.interop.to_torch`) -> `torch.nn.Linear` head (or the embedding matrix
when tied), computing the run's logits. `from_torch(embed, lstm, head, vocab, workdir)` writes a
run directory (config.json, dataset.json, vocab.json and the parameters as checkpoint 0) that
`load_run`, `train.evaluate` and `train.sample` read like a trained one (written under the
directory's lock, train/lock.py; `--out` only reads the workdir). A file written with
`--out` holds the module's state_dict, its sizes, the vocabulary and the run's config (so that
an import evaluates on the same data), and is what `--from_torch` reads. Needs PyTorch (`pip install torch`). Whatever `torch.nn.LSTM` cannot represent (peepholes,
clipping, layer norm, ops between layers, blocks other than plain) is refused with one line naming it.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import jax
import numpy as np
import torch

import lstm.interop
from configs import common
from lstm import StackedLSTM
from train import cli, data, faults, files, lock, models, objectives, workdir as workdir_lib
from train.run import Run, language_model, load_run
from train.validation import ConfigError, check_config

FORMAT = 'stacked-lstm/torch-language-model/1'


class TorchLanguageModel(torch.nn.Module):
  """Embedding -> LSTM -> linear head; `head=None` ties the head to the embedding matrix.
  `forward(tokens, state=None)` -> (logits (B, T, V), (h, c)), tokens (B, T) int64."""

  def __init__(self, embed: torch.nn.Embedding, lstm: torch.nn.LSTM,
               head: Optional[torch.nn.Linear]):
    super().__init__()
    self.embed, self.lstm, self.head = embed, lstm, head

  def forward(self, tokens, state=None):
    y, state = self.lstm(self.embed(tokens), state)
    logits = y @ self.embed.weight.T if self.head is None else self.head(y)
    return logits, state

  def sizes(self) -> dict[str, Any]:
    return {'vocab_size': self.embed.num_embeddings, 'embed_size': self.embed.embedding_dim,
            'hidden_size': self.lstm.hidden_size, 'num_layers': self.lstm.num_layers,
            'proj_size': self.lstm.proj_size, 'bias': self.lstm.bias,
            'dropout': self.lstm.dropout, 'tied': self.head is None}

  @classmethod
  def from_sizes(cls, vocab_size, embed_size, hidden_size, num_layers, proj_size, bias,
                 dropout, tied) -> 'TorchLanguageModel':
    lstm_module = torch.nn.LSTM(embed_size, hidden_size, num_layers=num_layers, bias=bias,
                                batch_first=True, dropout=dropout, proj_size=proj_size)
    head = None if tied else torch.nn.Linear(proj_size or hidden_size, vocab_size)
    return cls(torch.nn.Embedding(vocab_size, embed_size), lstm_module, head)


def _tensor(a) -> torch.Tensor:
  return torch.from_numpy(np.array(a, dtype=np.float32))


def to_torch(run: Run, direction: str = 'forward') -> TorchLanguageModel:
  """The run's language model (one direction of a biLM) as PyTorch modules, in eval mode."""
  model, params = language_model(run, direction)
  try:
    lstm_module = lstm.interop.to_torch(StackedLSTM(**model.stack), {'params': params['lstm']})
  except ValueError as e:
    raise ConfigError(str(e)) from None
  table = np.asarray(params['embed']['embedding'])
  embed = torch.nn.Embedding(*table.shape)
  head = None
  if 'head' in params:
    kernel = np.asarray(params['head']['kernel'])
    head = torch.nn.Linear(*kernel.shape)
  with torch.no_grad():
    embed.weight.copy_(_tensor(table))
    if head is not None:
      head.weight.copy_(_tensor(kernel.T))
      head.bias.copy_(_tensor(params['head']['bias']))
  return TorchLanguageModel(embed, lstm_module, head).eval()


def _numpy(t: torch.Tensor) -> np.ndarray:
  return t.detach().to(device='cpu', dtype=torch.float32).numpy()


def _params(embed, lstm_module, head) -> dict:
  """Our language model's parameters for the modules."""
  if lstm_module.bidirectional or (lstm_module.proj_size and head is None):
    raise ConfigError('a language model reads its text in one direction (bidirectional=False) '
                      'and a tied head needs proj_size=0')
  layers = lstm.interop.from_torch(lstm_module)[1]['params']
  if not lstm_module.bias:  # zero biases compute what no biases do
    for layer in layers.values():
      layer['forward']['bias'] = np.zeros(4 * lstm_module.hidden_size, np.float32)
  params = {'embed': {'embedding': _numpy(embed.weight)}, 'lstm': layers}
  if head is not None:
    bias = torch.zeros(head.out_features) if head.bias is None else head.bias
    params['head'] = {'kernel': _numpy(head.weight).T, 'bias': _numpy(bias)}
  return params


# What torch.nn.LSTM computes, in config.model's terms: every stack option at its declared
# default (the canonical LSTM), one direction, no ELMo pair; the sizes are set from the modules.
_TORCH_CELL = {**{f.name: f.default for f in dataclasses.fields(StackedLSTM)
                  if f.name in models.STACK_FIELDS}, 'bilm': False}


def _config(embed, lstm_module, head, vocab: data.Vocabulary, config):
  config = common.base_config() if config is None else config.copy_and_resolve_references()
  if config.dataset == 'ptb_char' and vocab.level != 'char':
    config.dataset = 'text'  # the default dataset reads characters; 'text' reads any level
  config.data.level = vocab.level
  m = config.model
  m.update(_TORCH_CELL)
  m.num_layers, m.hidden_size = lstm_module.num_layers, lstm_module.hidden_size
  m.proj_size = lstm_module.proj_size or None
  m.embed_size, m.tie_embeddings = embed.embedding_dim, head is None
  m.dropout = float(lstm_module.dropout)
  check_config(config)
  return config


def from_torch(embed: torch.nn.Embedding, lstm_module: torch.nn.LSTM,
               head: Optional[torch.nn.Linear], vocab: data.Vocabulary, workdir: str,
               config=None) -> Run:
  """Writes a run directory in `workdir` (which must hold no run) for the PyTorch language model
  `embed` -> `lstm_module` -> `head` (None: tied to the embedding) over `vocab`; returns it
  loaded. `config` (default: configs/common.py's, dataset 'text' at the vocabulary's level) says
  which data the model is for (evaluation on a split reads it); its model fields are set from
  the modules."""
  if embed.num_embeddings != len(vocab):
    raise ConfigError(f'the embedding has {embed.num_embeddings} rows, the vocabulary '
                      f'{len(vocab)} tokens: they must be equal')
  config = _config(embed, lstm_module, head, vocab, config)
  params = _params(embed, lstm_module, head)
  dataset = data.Dataset(name=config.dataset, kind='lm', splits={}, vocab_size=len(vocab),
                         num_classes=len(vocab), input_features=None, itos=list(vocab.itos),
                         level=vocab.level, vocab=vocab)
  expected = jax.eval_shape(lambda: objectives.for_dataset(dataset).build_model(config).init(
      jax.random.key(0), np.zeros((1, 1), np.int32))['params'])
  if jax.tree.map(lambda a: a.shape, expected) != jax.tree.map(np.shape, params):
    raise ConfigError('the modules do not form the language model the config describes')
  with faults.writing(workdir):
    os.makedirs(workdir, exist_ok=True)
  with lock.holding(workdir, 'import'):
    if os.path.exists(os.path.join(workdir, 'config.json')):
      raise ConfigError(f'{workdir} holds a run already; import into a new directory')
    workdir_lib.record_config(workdir, config.to_json_best_effort())
    workdir_lib.record_dataset(workdir, dataset)
    workdir_lib.save_params(workdir, 0, params, {'step': 0, 'imported_from': 'torch'})
  return load_run(workdir)


def save(module: TorchLanguageModel, vocab: data.Vocabulary, path: str, config=None) -> None:
  """The module's state_dict and sizes, the vocabulary and the run's config in one file,
  written atomically."""
  saved = {'format': FORMAT, 'sizes': module.sizes(), 'state_dict': module.state_dict(),
           'vocab': vocab.to_json(),
           'config': None if config is None else json.loads(config.to_json_best_effort())}
  files.atomic_write(path, lambda f: torch.save(saved, f))


def load(path: str) -> tuple[TorchLanguageModel, data.Vocabulary, Any]:
  """(module, vocabulary, config or None) from a file `save` wrote."""
  if not os.path.isfile(path):
    raise ConfigError(f'{path} is not a file; give the file that train.export --out wrote')
  try:
    saved = torch.load(path, weights_only=True)
  except Exception:  # noqa: BLE001 - torch raises many kinds for a file that is not its own
    saved = None
  if not isinstance(saved, dict) or saved.get('format') != FORMAT:
    raise ConfigError(f'{path} is not a language model written by train.export --out')
  module = TorchLanguageModel.from_sizes(**saved['sizes'])
  module.load_state_dict(saved['state_dict'])
  config = None if saved['config'] is None else workdir_lib.config_from_dict(saved['config'], path)
  return module.eval(), data.Vocabulary.from_json(saved['vocab']), config


def main(argv) -> None:
  cli.no_arguments(argv)
  flags = cli.FLAGS
  if flags.from_torch:
    module, vocab, config = load(flags.from_torch)
    run = from_torch(module.embed, module.lstm, module.head, vocab, flags.workdir, config)
    cli.output(f'imported {flags.from_torch} into {run.workdir}')
    return
  if not flags.out:
    raise ConfigError('give --out=FILE.pt (export) or --from_torch=FILE.pt (import)')
  run = load_run(flags.workdir, flags.step)
  save(to_torch(run, flags.direction), run.vocab, flags.out, run.config)
  cli.output(f'exported step {run.step} of {run.workdir} to {flags.out}')


if __name__ == '__main__':
  from absl import flags as absl_flags
  cli.define_run_flags()
  absl_flags.DEFINE_string('out', None, 'Write the run\'s language model here (torch.save).')
  absl_flags.DEFINE_string('from_torch', None, 'Import this file (written by --out) into '
                           '--workdir, a new directory.')
  absl_flags.DEFINE_string('direction', 'forward', 'biLM: the forward or backward model.')
  cli.run(main)
