"""Checks of call arguments, run on shapes (and on values when they are concrete) before tracing."""
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
