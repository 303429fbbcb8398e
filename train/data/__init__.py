"""Datasets and batching for the trainer: pure numpy, deterministic, resumable.

`load_dataset(config)` builds the `Dataset` named by `config.dataset` (a name in `DATASETS`) from
`config.data`; `Batcher` walks one of its splits. The loaders, one module per family:

  text.py           token streams for language models: Penn Treebank (char, word), text files
  corpus.py         text to token ids at corpus scale (chunked, vectorised, smallest dtype)
  token_cache.py    text files' ids kept on disk and memory-mapped by later runs
  fingerprint.py    content fingerprints of data files (the cache's key; checked on resume)
  vocab.py          `Vocabulary`: a language model's tokens; text to ids and back
  examples.py       datasets of whole examples: MNIST-1D, sklearn digits, copy task, adding problem
  speech_digits.py  spoken digit strings (train/speech.py synthesises them) for CTC
  dataset.py        `Dataset` and `Split`, what every loader returns
  batcher.py        `Batcher`

Nothing is downloaded, and nothing is written except in the project's cache directory
(lstm/cache.py): speech features (train/speech.py) and the ids of text files (token_cache.py).
"""
from __future__ import annotations

from typing import Any, Callable, Dict

from train.data.batcher import Batcher
from train.data.dataset import KINDS, SPLITS, Dataset, Split
from train.data.examples import (ADDING_BASELINE_MSE, COPY_BLANK, COPY_DATA_SYMBOLS,
                                 COPY_DELIMITER, COPY_LENGTH, copy_baseline, load_adding,
                                 load_copy, load_digits, load_mnist1d, make_adding_split,
                                 make_copy_split)
from train.data.speech_digits import load_speech_digits
from train.data.text import load_ptb_char, load_ptb_word, load_text
from train.data.vocab import EOS, UNK, Vocabulary


DATASETS: Dict[str, Callable[[Any], Dataset]] = {
    'ptb_char': load_ptb_char,
    'ptb_word': load_ptb_word,
    'text': load_text,
    'mnist1d': load_mnist1d,
    'digits': load_digits,
    'copy': load_copy,
    'adding': load_adding,
    'speech_digits': load_speech_digits,
}


def load_dataset(config: Any) -> Dataset:
  """The Dataset named by `config.dataset`, built from `config.data`."""
  if config.dataset not in DATASETS:
    raise ValueError(f'config.dataset={config.dataset!r} is not a known dataset; choose one of '
                     f'{", ".join(DATASETS)}')
  return DATASETS[config.dataset](config.data)


__all__ = ['ADDING_BASELINE_MSE', 'Batcher', 'COPY_BLANK', 'COPY_DATA_SYMBOLS', 'COPY_DELIMITER',
           'COPY_LENGTH', 'DATASETS', 'Dataset', 'EOS', 'KINDS', 'SPLITS', 'Split', 'UNK',
           'Vocabulary', 'copy_baseline', 'load_dataset', 'make_adding_split', 'make_copy_split']
