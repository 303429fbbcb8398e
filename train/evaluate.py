"""Evaluation of a trained run on a split of its data or on another text file.

  python -m train.evaluate --workdir=DIR [--step=best|latest|N] [--split=valid|test]
                           [--data_path=FILE]

The run's own evaluation (`trainer.eval_batcher`, `trainer.make_eval_step`, `trainer.evaluate`):
on a split it gives exactly the figure the run reported at that step. A file is encoded with the
run's vocabulary (train/data/vocab.py): tokens outside it become '<unk>' where the vocabulary has
it and are dropped otherwise, and are counted. Prints the metrics and writes them to
`DIR/eval/step<N>_<split or file name>.json` under the workdir's lock (train/lock.py: refused
while a training run or another evaluation writes there); results.json, metrics.jsonl and the
checkpoints are left as they were.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from typing import Any, Optional

import jax
import numpy as np

from train import cli, data, distributed, faults, files, lock, trainer, workdir as workdir_lib
from train.run import Run, load_run
from train.validation import ConfigError


def _split_batcher(run: Run, split: str) -> tuple[data.Batcher, dict]:
  if split not in ('valid', 'test'):
    raise ConfigError(f'--split={split!r} is not valid or test')
  try:
    dataset = data.load_dataset(run.config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  workdir_lib.check_dataset(run.workdir, dataset)
  return trainer.eval_batcher(run.config, dataset, run.objective, split), {'split': split}


def read_text(path: str, vocab: data.Vocabulary, encoding: str):
  """The file's contents as the vocabulary reads them: bytes at byte level, else text."""
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise ConfigError(f'--data_path={path!r} is not a file; point it at a plain-text file')
  with open(path, 'rb') as f:
    raw = f.read()
  if vocab.level == 'byte':
    return raw
  try:
    return raw.decode(encoding)
  except UnicodeDecodeError as e:
    raise ConfigError(f'--data_path={path!r} is not valid {encoding} text ({e.reason} at byte '
                      f'{e.start}), the encoding of the run (config.data.encoding)') from None


def _file_batcher(run: Run, path: str) -> tuple[data.Batcher, dict]:
  if run.vocab is None:
    raise ConfigError(f'--data_path is for language models; the run in {run.workdir} is a '
                      f'{run.dataset.kind} model of dataset {run.config.dataset}: use --split')
  ids, unknown = run.vocab.encode_counted(read_text(path, run.vocab, run.config.data.encoding))
  dataset = dataclasses.replace(run.dataset, splits={'train': data.Split(tokens=ids)})
  try:
    batcher = trainer.eval_batcher(run.config, dataset, run.objective, 'train')
  except ValueError:
    rows = run.config.eval_batch_size or run.config.batch_size
    raise ConfigError(f'--data_path={path!r} holds {len(ids)} tokens, too few for the run\'s '
                      f'evaluation batch of {rows} rows (at least {2 * rows})') from None
  dropped = run.vocab.unk_id is None
  return batcher, {'data_path': os.path.abspath(path), 'unknown_tokens': unknown,
                   'tokens': int(len(ids)) + (unknown if dropped else 0),
                   'unknown_handling': 'dropped' if dropped else f'read as {data.UNK}'}


def evaluate_run(run: Run, split: str = 'valid', data_path: Optional[str] = None) -> dict:
  """{'step', 'checkpoint', 'split' or 'data_path' (with token and unknown-token counts),
  'metrics'}: the run's parameters evaluated as the trainer evaluates them."""
  batcher, record = _file_batcher(run, data_path) if data_path else _split_batcher(run, split)
  dist = distributed.Distribution()
  num_params = sum(int(np.size(x)) for x in jax.tree.leaves(run.params))
  sizes = lambda: (f'batches of {batcher.batch_shape()[0]} rows (config.eval_batch_size, else '
                   f'config.batch_size, of the run) and {num_params:,} parameters')
  with faults.out_of_memory_reported(sizes, 'evaluate on a device with more memory (e.g. the '
                                     'CPU: JAX_PLATFORMS=cpu)'):
    sample = trainer.first_rows(batcher)
    zero_carry = trainer.make_zero_carry(run.model, run.objective, dist, run.params, sample)
    eval_step = jax.jit(trainer.make_eval_step(run.model, run.objective))
    params = jax.device_put(run.params, dist.replicated)
    sums = trainer.evaluate(eval_step, params, batcher, dist, run.objective, zero_carry)
  return {'step': run.step, 'checkpoint': run.checkpoint, **record,
          'metrics': run.objective.summarize(sums)}


def record_path(run: Run, record: dict) -> str:
  """DIR/eval/step<N>[_best]_<split or file name>.json."""
  what = record.get('split') or re.sub(r'[^A-Za-z0-9._-]+', '_',
                                       os.path.basename(record['data_path']))
  best = '_best' if run.checkpoint == 'best' else ''
  return os.path.join(run.workdir, 'eval', f'step{run.step}{best}_{what}.json')


def describe(record: dict) -> str:
  """One line for the console: what was evaluated, the metrics, unknown tokens."""
  what = record.get('split') or record['data_path']
  metrics = ', '.join(f'{k} {v:.4f}' for k, v in record['metrics'].items())
  line = f'{what} (step {record["step"]}, {record["checkpoint"]}): {metrics}'
  if 'unknown_tokens' in record:
    line += (f'; {record["unknown_tokens"]} of {record["tokens"]} tokens unknown '
             f'({record["unknown_handling"]})')
  return line


def main(argv) -> None:
  cli.no_arguments(argv)
  flags = cli.FLAGS
  run = load_run(flags.workdir, flags.step)
  writes = jax.process_index() == 0
  with lock.holding(run.workdir, 'evaluation') if writes else contextlib.nullcontext():
    record = evaluate_run(run, flags.split, flags.data_path)
    path = record_path(run, record)
    if writes:
      files.write_json(path, record, sort_keys=True)
  cli.output(describe(record))
  cli.output(f'written to {path}')


def _define_flags(flags: Any) -> None:
  cli.define_run_flags()
  flags.DEFINE_string('split', 'valid', 'The split to evaluate: valid or test.')
  flags.DEFINE_string('data_path', None, 'A text file to evaluate on instead of a split '
                      '(language models), encoded with the run\'s vocabulary.')


if __name__ == '__main__':
  from absl import flags as absl_flags
  _define_flags(absl_flags)
  cli.run(main)
