"""One LSTM layer over a sequence: the time loop, padding masks, segment resets, padded reversal.

Carries are `(h, c)`, hidden state first (PyTorch's and Keras' order). Flax's own cells use
`(c, h)`: convert with `h, c = carry; flax_carry = (c, h)`, and back with
`c, h = flax_carry; carry = (h, c)`. A Flax-ordered carry passed here runs and gives wrong
outputs when h and c have the same width.

`run_sequence` is the loop every module here uses: the input projection of all steps is one matmul
before the loop, then a `lax.scan` over time. Arrays are time-major inside (T, B, F), so a stack
transposes once at each end rather than once per layer. `LSTMLayer` wraps it as a module with
batch-major input for users who want a single layer.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from lstm import checks, manual_axes
from lstm.cell import Carry, LSTMCell, restart

Array = jax.Array


def time_mask(seq_lengths: Optional[Array], num_steps: int) -> Optional[Array]:
  """(T, B) boolean mask of valid steps, or None when every step is valid."""
  if seq_lengths is None:
    return None
  return jnp.arange(num_steps)[:, None] < seq_lengths[None, :]


def reverse_padded(x: Array, seq_lengths: Optional[Array]) -> Array:
  """Reverses time-major `x` (T, B, ...) within each sequence's valid part; padding stays put.

  The permutation is its own inverse, so the same call maps reversed outputs back.
  """
  if seq_lengths is None:
    return x[::-1]
  t = jnp.arange(x.shape[0])[:, None]
  index = jnp.where(t < seq_lengths[None, :], seq_lengths[None, :] - 1 - t, t)
  index = index.reshape(index.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, index, axis=0)


# The cell options that act only in training (`deterministic=False`), drawing masks.
TRAINING_OPTIONS = ('recurrent_dropout', 'zoneout_cell', 'zoneout_hidden', 'weight_drop')


def zero_carry(cell: LSTMCell, batch: int, x_dtype=None) -> Carry:
  """Zero `(h, c)` for `batch` rows, in the dtype the layer computes in for inputs of `x_dtype`
  (the cell's `dtype`, else that of the inputs and parameters together; the cell's own
  `initialize_carry` without `x_dtype`)."""
  carry = cell.initialize_carry(None, (batch, 1))
  if x_dtype is None or cell.dtype is not None:
    return carry
  dtype = jnp.result_type(x_dtype, cell.param_dtype)
  return tuple(a.astype(dtype) for a in carry)


def resolve_deterministic(deterministic: Optional[bool], options: list[str], module: str,
                          initializing: bool = False) -> bool:
  """The mode of a call: `deterministic` when given; with any training-time `options` set it must
  be given (as `flax.linen.Dropout` asks; `init` may leave it out), else the call is
  deterministic."""
  if deterministic is not None:
    return bool(deterministic)
  if options and not initializing:
    raise ValueError(f'{module} has {", ".join(options)} set, so its call needs deterministic=: '
                     "False to train (with rngs={'dropout': key}), True to evaluate")
  return True


def training_options(config, prefix: str = '') -> list[str]:
  """The training-time options set in a cell's options (a mapping or an `LSTMCell`)."""
  get = config.get if isinstance(config, dict) else lambda name: getattr(config, name)
  return [f'{prefix}{name}={get(name)}' for name in TRAINING_OPTIONS if get(name)]


def loop_resets(segment_starts: Array, mask: Optional[Array], seq_lengths: Optional[Array],
                reverse: bool) -> Array:
  """(T, B) steps, in the loop's own order, before which the carry restarts from zero.

  Forwards, a segment's first step; backwards, its last step, where the reversed reading of the
  segment begins (the step before the next segment's start). Marks past a length do nothing.
  """
  starts = segment_starts if mask is None else segment_starts & mask
  if not reverse:
    return starts
  ends = jnp.concatenate([starts[1:], jnp.zeros_like(starts[:1])])
  return reverse_padded(ends, seq_lengths)


def run_sequence(cell: LSTMCell, x: Array, mask: Optional[Array] = None,
                 seq_lengths: Optional[Array] = None, initial_carry: Optional[Carry] = None,
                 reverse: bool = False, remat: bool = False,
                 segment_starts: Optional[Array] = None,
                 deterministic: Optional[bool] = None) -> tuple[Array, Carry]:
  """Runs a bound `cell` over time-major `x` (T, B, F); returns outputs (T, B, P) and the final
  carry `(h, c)` (h first; Flax's cells order it `(c, h)`: `h, c = carry; flax_carry = (c, h)`).

  Args:
    cell: a bound `LSTMCell` (inside a module's `__call__`).
    x: inputs, time-major (T, B, F).
    mask: (T, B) bool, the valid steps (or derived from `seq_lengths`); None: all.
    seq_lengths: (B,) int lengths, needed with `reverse` and padding.
    initial_carry: `(h, c)`, h (B, P) and c (B, H); None: zeros in the compute dtype.
    reverse: run each sequence from its last valid step.
    remat: recompute the loop in the backward pass instead of keeping its activations.
    segment_starts: (T, B) bool, steps before which the carry restarts from zero.
    deterministic: False applies the cell's training-time options; required when one is set.

  Returns:
    `(outputs (T, B, P), (h, c))`.

  Past a sequence's length the carry stops changing and the output is zero. `reverse` runs each
  sequence from its last valid step to its first, and returns outputs in the original order.
  `segment_starts` (T, B) bool marks steps that begin a new segment: the carry is reset to zero
  before them, so each segment computes what it computes alone; a reversed layer resets before a
  segment's last step, where its reading of the segment begins. `initial_carry` is the carry of
  the segment read first (step 0 marked drops it forwards).
  `deterministic=False` applies the cell's training-time options (masks from `cell.noise`).
  """
  from lstm import fast  # pylint: disable=import-outside-toplevel

  w = cell.weights(x.shape[-1])
  deterministic = resolve_deterministic(deterministic, training_options(cell), 'the LSTM cell',
                                        cell.is_initializing())
  noise = cell.noise(x.shape[0], x.shape[1], deterministic)
  if noise.weight is not None:
    w = w._replace(recurrent_kernel=w.recurrent_kernel * noise.weight)
  resets = (None if segment_starts is None
            else loop_resets(segment_starts, mask, seq_lengths, reverse))
  if reverse:
    x = reverse_padded(x, seq_lengths)
  if initial_carry is None:
    carry = zero_carry(cell, x.shape[1], x.dtype)
  else:
    checks.check_carry_dtype(initial_carry, fast.compute_dtype(cell, w, x))
    carry = initial_carry

  if fast.supports(cell, w, x, carry) and not fast.forward_mode():
    # Custom-VJP projection and time loop (lstm/fast.py); the scan below is the reference it is
    # tested against.
    outputs, carry = fast.run_layer(cell, w, x, carry, mask, remat, resets, noise.recurrent)
    if reverse:
      outputs = reverse_padded(outputs, seq_lengths)
    return outputs, carry

  z = cell.project_inputs(w, x)

  def step(carry, inputs):
    z_t, m_t, r_t, zc_t, zh_t = inputs
    carry = restart(r_t, carry)
    new_carry, h = cell.step(w, carry, z_t,
                             noise._replace(zoneout_cell=zc_t, zoneout_hidden=zh_t))
    if m_t is not None:
      m = m_t[:, None]
      new_carry = jax.tree.map(lambda new, old: jnp.where(m, new, old), new_carry, carry)
      h = jnp.where(m, h, jnp.zeros((), h.dtype))
    return new_carry, h

  if remat:
    step = jax.checkpoint(step, prevent_cse=False)
  carry = manual_axes.vary_together(*carry, z)[:2]  # under shard_map: varying as the outputs
  carry, outputs = jax.lax.scan(
      step, carry, (z, mask, resets, noise.zoneout_cell, noise.zoneout_hidden))
  if reverse:
    outputs = reverse_padded(outputs, seq_lengths)
  return outputs, carry


class LSTMLayer(nn.Module):
  """One LSTM layer over batch-major input (B, T, F): `outputs, (h, c) = layer(x, seq_lengths)`.

  The carry is `(h, c)`, h first; Flax's cells use `(c, h)` (`h, c = carry; flax_carry = (c, h)`).

  Attributes:
    cell: the `LSTMCell` (its options; it is bound here).
    reverse: run each sequence from its last valid step; outputs come back in input order.
    remat: recompute the time loop in the backward pass to save memory.
  """
  cell: LSTMCell
  reverse: bool = False
  remat: bool = False

  @nn.compact
  def __call__(self, x: Array, seq_lengths: Optional[Array] = None,
               initial_carry: Optional[Carry] = None, segment_starts: Optional[Array] = None,
               deterministic: Optional[bool] = None) -> tuple[Array, Carry]:
    """Runs the layer.

    Args:
      x: inputs (B, T, F).
      seq_lengths: (B,) int lengths; outputs past them are zero and the carry stops there.
      initial_carry: `(h, c)` with h (B, P) and c (B, H) (h first, unlike Flax's `(c, h)`);
        None: zeros.
      segment_starts: (B, T) bool, steps before which the carry restarts from zero.
      deterministic: False applies the cell's training-time options (recurrent dropout, zoneout,
        weight drop; `rngs={'dropout': key}`), True evaluates; required when one is set.

    Returns:
      `(outputs (B, T, P), (h, c))`, the final carry of each sequence.
    """
    kernel = self.variables.get('params', {}).get('cell', {}).get('kernel')
    checks.check_inputs(x, seq_lengths, None if kernel is None else kernel.shape[0])
    checks.check_segment_starts(x, segment_starts)
    if initial_carry is not None:
      checks.check_carry(initial_carry, 'initial_carry', x.shape[0], self.cell.features,
                         self.cell.carry_features)
    x_tm = jnp.swapaxes(x, 0, 1)
    mask = time_mask(seq_lengths, x_tm.shape[0])
    starts = None if segment_starts is None else jnp.swapaxes(segment_starts, 0, 1)
    deterministic = resolve_deterministic(deterministic, training_options(self.cell), 'LSTMLayer',
                                          self.is_initializing())
    outputs, carry = run_sequence(self.cell, x_tm, mask, seq_lengths, initial_carry,
                                  self.reverse, self.remat, starts, deterministic)
    return jnp.swapaxes(outputs, 0, 1), carry
