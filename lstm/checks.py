"""Checks of call arguments and options, run on shapes (and on values when they are concrete)
before tracing.

Every message names the argument as the caller spelled it. The checks of cell options take
`name`, which maps an `LSTMCell` option to the caller's name for it: `StackedLSTM` reports
`hidden_size` and `cells[1]['proj_size']` where the cell itself would say `features` and
`proj_size`.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lstm import activations

OptionName = Callable[[str], str]
RATES = ('recurrent_dropout', 'zoneout_cell', 'zoneout_hidden', 'weight_drop')


def _same(option: str) -> str:
  return option


def check_inputs(x, seq_lengths, in_features: int | None = None) -> None:
  """Raises ValueError/TypeError naming the argument when `x` or `seq_lengths` is malformed;
  `in_features` is the input width the variables were made for, when they exist."""
  shape = getattr(x, 'shape', None)
  if shape is None:
    raise TypeError(f'x must be an array of shape (batch, time, features), got {type(x).__name__}')
  if len(shape) != 3:
    raise ValueError(f'x must have rank 3 (batch, time, features), got shape {tuple(shape)}')
  if in_features is not None and shape[-1] != in_features:
    raise ValueError(f'x has {shape[-1]} features (its last axis), but the variables were made '
                     f'for {in_features}: give x of shape (batch, time, {in_features})')
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


def describe(value) -> str:
  """`value` in a message: an array by its shape, a tuple or list by its length."""
  shape = getattr(value, 'shape', None)
  if shape is not None:
    return f'an array of shape {tuple(shape)}'
  if isinstance(value, (tuple, list)):
    return f'a {type(value).__name__} of {len(value)}'
  return type(value).__name__


def check_carry(carry, name: str, batch: int, features: int, carry_features: int) -> None:
  """Raises ValueError unless `carry` is an (h, c) pair of (batch, carry_features) and
  (batch, features) arrays; `name` is how the caller spells `carry`."""
  if not isinstance(carry, (tuple, list)) or len(carry) != 2:
    raise ValueError(f'{name} must be an (h, c) pair of arrays, got {describe(carry)}')
  for i, (part, width) in enumerate(zip(('h', 'c'), (carry_features, features))):
    shape = getattr(carry[i], 'shape', None)
    if shape is None or tuple(shape) != (batch, width):
      raise ValueError(f'{name}[{i}] ({part}) must have shape (batch, {width}) = '
                       f'({batch}, {width}), got {describe(carry[i])}')


def check_carry_dtype(carry, compute_dtype) -> None:
  """Raises TypeError unless h and c of `carry` share one floating dtype at least as wide as
  `compute_dtype` (otherwise the updated carry would not have the carry's own dtype)."""
  h, c = carry
  dtype = np.dtype(h.dtype)
  if (dtype != np.dtype(c.dtype) or not jnp.issubdtype(dtype, jnp.floating)
      or jnp.promote_types(dtype, compute_dtype) != dtype):
    raise TypeError(f'initial_carry must hold h and c in one floating dtype, {compute_dtype} (the '
                    f'layer computes in it) or wider, got h {h.dtype} and c {c.dtype}')


def _positive_int(name: str, value, allow_none: bool = False) -> None:
  if value is None and allow_none:
    return
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    right = 'None or a positive integer' if allow_none else 'a positive integer'
    raise ValueError(f'{name} must be {right}, got {value!r}')


def _positive_or_none(name: str, value) -> None:
  if value is not None and not (isinstance(value, (int, float)) and value > 0):
    raise ValueError(f'{name} must be None or a positive number, got {value!r}')


def check_cell_options(options: Mapping[str, Any], name: Optional[OptionName] = None) -> None:
  """Raises ValueError for the first bad value among the `LSTMCell` options `options` (every
  field), naming each option as `name` spells it."""
  name = name or _same
  features, proj_size = options['features'], options['proj_size']
  _positive_int(name('features'), features)
  _positive_int(name('proj_size'), proj_size, allow_none=True)
  if proj_size is not None and proj_size >= features:
    raise ValueError(f'{name("proj_size")} must be smaller than {name("features")} ({features}), '
                     f'got {proj_size}')
  if options['proj_clip'] is not None and proj_size is None:
    raise ValueError(f'{name("proj_clip")}={options["proj_clip"]!r} needs a projection: set '
                     f'{name("proj_size")} as well')
  for option in ('cell_clip', 'proj_clip'):
    _positive_or_none(name(option), options[option])
  for option in ('activation', 'recurrent_activation', 'candidate_activation',
                 'output_activation'):
    if options[option] is not None or option in ('activation', 'recurrent_activation'):
      activations.get(options[option], name(option))
  off = [gate for gate in ('input_gate', 'forget_gate') if not options[gate]]
  if options['coupled_gates'] and off:
    raise ValueError(f'{name("coupled_gates")}=True makes the input gate 1 - f: it needs '
                     + ' and '.join(f'{name(g)}=True' for g in off) + ', got '
                     + ', '.join(f'{name(g)}=False' for g in off))
  for option in RATES:
    check_rate(name(option), options[option])
