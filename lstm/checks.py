"""Checks of call arguments and options, run on shapes (and on values when they are concrete)
before tracing."""
from __future__ import annotations

import jax
import numpy as np


def check_inputs(x, seq_lengths, in_features: int | None = None) -> None:
  """Raises ValueError/TypeError naming the argument when `x` or `seq_lengths` is malformed."""
  shape = getattr(x, 'shape', None)
  if shape is None:
    raise TypeError(f'x must be an array of shape (batch, time, features), got {type(x).__name__}')
  if len(shape) != 3:
    raise ValueError(f'x must have rank 3 (batch, time, features), got shape {tuple(shape)}')
  if in_features is not None and shape[-1] != in_features:
    raise ValueError(f'x has {shape[-1]} features, expected {in_features}')
  if seq_lengths is None:
    return
  ls = getattr(seq_lengths, 'shape', None)
  if ls is None:
    raise TypeError(f'seq_lengths must be an integer array of shape ({shape[0]},), '
                    f'got {type(seq_lengths).__name__}')
  if tuple(ls) != (shape[0],):
    raise ValueError(f'seq_lengths must have shape (batch,) = ({shape[0]},), got {tuple(ls)}')
  if not np.issubdtype(seq_lengths.dtype, np.integer):
    raise TypeError(f'seq_lengths must have an integer dtype, got {seq_lengths.dtype}')
  if not isinstance(seq_lengths, jax.core.Tracer):
    values = np.asarray(seq_lengths)
    if values.size and (values.min() < 0 or values.max() > shape[1]):
      raise ValueError(f'seq_lengths must lie in [0, {shape[1]}] (the time axis of x), '
                       f'got values from {values.min()} to {values.max()}')


def check_rate(name: str, value) -> None:
  """Raises ValueError naming `name` unless `value` is a probability in [0, 1)."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
    raise ValueError(f'{name} must be in [0, 1), got {value!r}')


def check_segment_starts(x, segment_starts) -> None:
  """Raises ValueError/TypeError unless `segment_starts` is None or a (batch, time) bool array."""
  if segment_starts is None:
    return
  shape = getattr(segment_starts, 'shape', None)
  if shape is None or tuple(shape) != tuple(x.shape[:2]):
    got = type(segment_starts).__name__ if shape is None else tuple(shape)
    raise ValueError(f'segment_starts must have shape (batch, time) = {tuple(x.shape[:2])}, '
                     f'got {got}')
  if segment_starts.dtype != np.bool_:
    raise TypeError(f'segment_starts must be a boolean array, got dtype {segment_starts.dtype}')
