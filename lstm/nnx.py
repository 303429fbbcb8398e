"""The library's modules in Flax NNX: `to_nnx(module, *example_inputs, rngs=...)`.

The modules are Flax linen modules; `flax.nnx.bridge.ToNNX` turns one into an NNX module whose
parameters are `nnx.Param`s (so `nnx.Optimizer`, `nnx.jit`, `nnx.grad` and `nnx.split` see them).
`to_nnx` adds what the bridge leaves out:

* the parameters are created at once, from example inputs (the bridge's `lazy_init`);
* `deterministic` is an attribute, so `model.train()` turns the training-time options (dropout
  between layers, recurrent dropout, zoneout, weight drop) on and `model.eval()` off, as for
  `nnx.Dropout`; a call may still pass `deterministic=` itself. It starts as `True` (eval);
* the masks draw from the `rngs`' 'dropout' stream (`nnx.Rngs(params=0, dropout=1)`), which
  advances at every call, also under `nnx.jit`;
* an `LSTMCell` becomes a cell for `nnx.RNN` (`num_feature_axes`, `initialize_carry`).

    model = lstm.nnx.to_nnx(lstm.StackedLSTM(num_layers=2, hidden_size=64, dropout=0.2), x,
                            rngs=nnx.Rngs(params=0, dropout=1))
    model.train()
    outputs, carries = model(x, seq_lengths)        # carries: one (h, c) per layer
    rnn = nnx.RNN(lstm.nnx.to_nnx(lstm.LSTMCell(64), x[:, 0], rngs=nnx.Rngs(0)))
    outputs = rnn(x)

Carries are `(h, c)`, h first; Flax's own cells use `(c, h)`: `h, c = carry; flax_carry = (c, h)`.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
from flax import nnx
from flax.nnx import bridge

from lstm.cell import Carry, LSTMCell


class Module(nnx.Module):
  """A layer or stack of this library as an NNX module; `deterministic` follows `train()` and
  `eval()`. Made by `to_nnx`."""

  def __init__(self, module: nn.Module, *example_args, rngs: nnx.Rngs, **example_kwargs):
    self.linen = bridge.ToNNX(module, rngs=rngs)
    self.linen.lazy_init(*example_args, **example_kwargs)
    self.deterministic = True

  def __call__(self, *args, deterministic: Optional[bool] = None, **kwargs):
    """The linen module's `__call__`: `outputs, carry = model(x, seq_lengths, initial_carry)`.

    Args:
      *args, **kwargs: those of `LSTMLayer.__call__` / `StackedLSTM.__call__`; carries are
        `(h, c)`, h first (Flax's cells use `(c, h)`).
      deterministic: None follows the mode (`model.train()`: False, `model.eval()`: True).

    Returns:
      What the linen module returns: `(outputs, carry)`.
    """
    mode = self.deterministic if deterministic is None else deterministic
    return self.linen(*args, deterministic=mode, **kwargs)


class Cell(nnx.Module):
  """An `LSTMCell` as an NNX recurrent cell, for `nnx.RNN`: `(h, c), h = cell((h, c), x_t)`.
  Made by `to_nnx`. One deterministic step, as the linen cell's `__call__`."""

  def __init__(self, cell: LSTMCell, example_inputs: jax.Array, *, rngs: nnx.Rngs):
    self.linen = bridge.ToNNX(cell, rngs=rngs)
    self.features = cell.features
    carry = cell.initialize_carry(None, example_inputs.shape)
    self.linen.lazy_init(carry, example_inputs)

  def __call__(self, carry: Carry, inputs: jax.Array) -> tuple[Carry, jax.Array]:
    """One deterministic step.

    Args:
      carry: `(h, c)`, h first (Flax's cells take `(c, h)`).
      inputs: x_t (B, F).

    Returns:
      `((h, c), h)`: the new carry and the output.
    """
    return self.linen(carry, inputs)

  def initialize_carry(self, input_shape: tuple[int, ...], rngs: Any = None,
                       carry_init: Any = None) -> Carry:
    """Zero `(h, c)` for inputs of shape (*batch, features); `rngs` and `carry_init` unused."""
    del rngs, carry_init
    return self.linen.to_nnx__module.initialize_carry(None, input_shape)

  @property
  def num_feature_axes(self) -> int:
    return 1


def to_nnx(module: nn.Module, *example_inputs, rngs: nnx.Rngs, **example_kwargs):
  """`module` (an `LSTMCell`, `LSTMLayer` or `StackedLSTM`) as an initialised NNX module.

  Args:
    module: the linen module, configured.
    *example_inputs: inputs of the shapes it will see, for its parameters' shapes: x (B, T, F)
      for a layer or stack, x_t (B, F) for a cell.
    rngs: `nnx.Rngs` with a 'params' (or default) stream and, for the training-time options, a
      'dropout' stream.
    **example_kwargs: further example arguments of the module's `__call__` (layers and stacks).

  Returns:
    A `Cell` for an `LSTMCell`, else a `Module`; both in eval mode (`model.train()` to train).
  """
  if isinstance(module, LSTMCell):
    if len(example_inputs) != 1 or example_kwargs:
      raise TypeError('to_nnx(LSTMCell(...), x_t, rngs=...) takes one example input, x_t of '
                      'shape (batch, features)')
    return Cell(module, example_inputs[0], rngs=rngs)
  return Module(module, *example_inputs, rngs=rngs, **example_kwargs)
