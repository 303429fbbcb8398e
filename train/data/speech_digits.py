"""The `speech_digits` dataset: spoken digit strings from `train.speech`, as a CTC dataset.

`config.data.speech_digits` holds the generator's parameters (declared in configs/common.py).
Split fields: inputs (N, T, F) float32, lengths (N,) int32 frames, targets (N, max_digits) int32
digit ids (-1 padding), weights (N, max_digits) float32 (1 on real labels: label lengths are
weights.sum(1)). num_classes=10 digits; the CTC blank is class 10, added by its objective.
"""
from __future__ import annotations

import json
from typing import Any, Dict

import numpy as np

from train import speech
from train.data.dataset import Dataset, Split, readonly

_LOADED: Dict[str, Any] = {}  # the last dataset built, by its arguments


def load_speech_digits(data_config: Any) -> Dataset:
  fields = data_config.speech_digits
  train_voices = speech.as_voices(fields.voices, speech.TRAIN_VOICES,
                                  'config.data.speech_digits.voices')
  kwargs = dict(
      num_train=int(fields.num_train), num_valid=int(fields.num_valid),
      num_test=int(fields.num_test), min_digits=int(fields.min_digits),
      max_digits=int(fields.max_digits), seed=int(fields.seed),
      train_voices=train_voices,
      test_voices=speech.as_voices(fields.test_voices, speech.TEST_VOICES,
                                   'config.data.speech_digits.test_voices'),
      valid_voices=speech.as_voices(fields.valid_voices, train_voices,
                                    'config.data.speech_digits.valid_voices'),
      num_mels=int(fields.num_mels), energy=bool(fields.energy), delta_order=int(fields.deltas),
      normalize_features=bool(fields.normalize), subsample=int(fields.subsample),
      rate_jitter=float(fields.rate_jitter), pitch_jitter=int(fields.pitch_jitter),
      cache_dir=fields.cache_dir)
  for name in ('num_train', 'num_valid', 'num_test'):
    if kwargs[name] < 1:
      raise ValueError(f'config.data.speech_digits.{name}={kwargs[name]} must be >= 1')
  memo = json.dumps(kwargs, sort_keys=True, default=list)
  if memo not in _LOADED:
    _LOADED.clear()  # keep one dataset in memory
    _LOADED[memo] = speech.make_digit_dataset(**kwargs)
  built = _LOADED[memo]
  splits = {}
  for name, s in built.items():
    weights = (np.arange(s.labels.shape[1])[None, :] < s.label_lengths[:, None]).astype(np.float32)
    for a in (s.features, s.lengths, s.labels, weights):
      readonly(a)
    splits[name] = Split(inputs=s.features, lengths=s.lengths, targets=s.labels, weights=weights)
  return Dataset(name='speech_digits', kind='ctc', splits=splits, vocab_size=None,
                 num_classes=speech.NUM_CLASSES,
                 input_features=int(built['train'].features.shape[2]), itos=list(speech.DIGIT_WORDS))
