"""Stacked LSTMs for Flax: cells, layers over time, stacks, and weight interop with PyTorch/Keras.

Carries are `(h, c)`, hidden state first; Flax's own cells use `(c, h)`:
`h, c = carry; flax_carry = (c, h)`. The modules are Flax linen modules; `lstm.nnx.to_nnx` makes
NNX modules of them. They compose with JAX's transformations (`lstm.fast` says which and how).
"""
from lstm import activations
from lstm.cell import CellWeights, LSTMCell
from lstm.layer import LSTMLayer, reverse_padded, run_sequence
from lstm.stack import StackedLSTM, looped_to_scanned, scanned_to_looped

__all__ = ['activations', 'CellWeights', 'LSTMCell', 'LSTMLayer', 'StackedLSTM', 'reverse_padded',
           'run_sequence', 'looped_to_scanned', 'scanned_to_looped']
__version__ = '0.1.0'
