"""`StackedLSTM`: LSTM layers stacked, with a configurable block between them.

Layer 1 reads the input x and maps it to the stack's width: y_1 = LSTM_1(x). Each later layer
l = 2..L is a block around its LSTM (`block`), with `op` the between-op (`between`; identity by
default), `drop` the dropout between layers and `norm` a LayerNorm or RMSNorm (`norm`):

  plain                 y_l = LSTM_l(drop(op(y_{l-1})))                  h straight up (default)
  residual              y_l = y_{l-1} + LSTM_l(drop(op(y_{l-1})))        GNMT, Kim et al. 2017
  residual_op_on_skip   u = drop(op(y_{l-1}));  y_l = u + LSTM_l(u)       op on the skip path too
  prenorm               y_l = y_{l-1} + LSTM_l(drop(op(norm(y_{l-1}))))  and norm(y_L) at the end
  postnorm              y_l = norm(y_{l-1} + LSTM_l(drop(op(y_{l-1}))))  the original Transformer

With `ffn_factor` > 0 each block also has a position-wise feed-forward sublayer after its LSTM
sublayer, in the same form, on z = the block's output above: F(z) for plain, z + F(z) for the
residual forms, z + F(norm'(z)) for prenorm, norm'(z + F(z)) for postnorm (norm' its own norm),
where F(u) = W_2 act(W_1 u + b_1) + b_2, or W_2 (act(W_g u + b_g) * (W_1 u + b_1)) + b_2 with
`ffn_gated` (xLSTM's gated MLP), W_1 of width round(ffn_factor * d) for a stack of width d.
The residual forms need every layer to output the same width. `scan_layers` runs layers 2..L
under `nn.scan` over the layer axis (the first has its own input width); `scanned_to_looped` /
`looped_to_scanned` convert parameters between the looped and scanned parameter trees.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from lstm import activations, checks, norms
from lstm.cell import OPTIONS, CellOptions, Initializer, LSTMCell  # noqa: F401 (Initializer: the inherited fields)
from lstm.layer import (resolve_deterministic, run_sequence, time_mask, training_options,
                        zero_carry)

Array = jax.Array
Between = Union[str, Callable[[Array], Array]]
CELL_FIELDS = ('features',) + OPTIONS
BLOCKS = ('plain', 'residual', 'residual_op_on_skip', 'prenorm', 'postnorm')
RESIDUAL_BLOCKS = ('residual', 'residual_op_on_skip', 'prenorm', 'postnorm')
NORMED_BLOCKS = ('prenorm', 'postnorm')
# Stack options that change nothing unless the condition on the stack holds.
NEEDS = {'norm': lambda m: m.block in NORMED_BLOCKS,
         'ffn_activation': lambda m: bool(m.ffn_factor),
         'ffn_gated': lambda m: bool(m.ffn_factor),
         'variational': lambda m: bool(m.dropout)}


def _check_between(between: Between) -> None:
  if callable(between) or between == 'none':
    return
  if isinstance(between, str) and (between.lower() in activations.REGISTRY
                                   or between.lower() in norms.REGISTRY):
    return
  raise ValueError(f'between={between!r} is not known; use a callable or one of: '
                   + ', '.join(['none'] + norms.names() + activations.names()))


def _check_block(block: str, norm: str, ffn_factor, ffn_activation) -> None:
  if block not in BLOCKS:
    raise ValueError(f'block={block!r} is not known; use one of: {", ".join(BLOCKS)}')
  norms.get(norm, 'norm')
  if isinstance(ffn_factor, bool) or not isinstance(ffn_factor, (int, float)) or ffn_factor < 0:
    raise ValueError(f'ffn_factor must be a number >= 0 (0: no feed-forward sublayer), '
                     f'got {ffn_factor!r}')
  activations.get(ffn_activation, 'ffn_activation')


class FeedForward(nn.Module):
  """Position-wise feed-forward sublayer: W_2 act(W_1 u + b_1) + b_2, or with `gated`
  W_2 (act(W_g u + b_g) * (W_1 u + b_1)) + b_2; the inner width is `hidden`, the output `u`'s."""
  hidden: int
  activation: activations.Activation = 'gelu'
  gated: bool = False
  dtype: Optional[Any] = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, u: Array) -> Array:
    dense = lambda features, name: nn.Dense(features, dtype=self.dtype,
                                            param_dtype=self.param_dtype, name=name)
    act = activations.get(self.activation, 'ffn_activation')
    up = dense(self.hidden, 'up')(u)
    inner = act(dense(self.hidden, 'gate')(u)) * up if self.gated else act(up)
    return dense(u.shape[-1], 'down')(inner)


class _Layer(nn.Module):
  """One stacked layer: the first is its LSTM alone; a later one is the `block` around it."""
  cell: Mapping[str, Any]
  first: bool
  bidirectional: bool
  reverse: bool
  between: Between
  block: str
  norm: str
  ffn_factor: float
  ffn_activation: activations.Activation
  ffn_gated: bool
  dropout: float
  variational: bool
  remat: bool
  deterministic: bool

  def _norm(self, name: str):
    return norms.make(self.norm, self.cell.get('dtype'), self.cell['param_dtype'], name)

  def _branch_input(self, y):
    """drop(op(y)), after the block's own norm for prenorm."""
    x = self._norm('norm')(y) if self.block == 'prenorm' else y
    if isinstance(self.between, str) and self.between.lower() in norms.REGISTRY:
      x = norms.make(self.between, self.cell.get('dtype'), self.cell['param_dtype'],
                     'between')(x)
    elif self.between != 'none':
      x = activations.get(self.between, 'between')(x)
    if self.dropout > 0:
      x = nn.Dropout(self.dropout, broadcast_dims=(0,) if self.variational else ())(
          x, deterministic=self.deterministic)
    return x

  @nn.compact
  def __call__(self, x, mask, seq_lengths, carry, starts):
    u = x if self.first else self._branch_input(x)
    directions = [('forward', self.reverse)]
    if self.bidirectional:
      directions.append(('backward', not self.reverse))
    outputs, carries = [], []
    for i, (name, reverse) in enumerate(directions):
      cell = LSTMCell(**self.cell, name=name)
      init = None if carry is None else (carry[i] if self.bidirectional else carry)
      y, c = run_sequence(cell, u, mask, seq_lengths, init, reverse, self.remat, starts,
                          self.deterministic)
      outputs.append(y)
      carries.append(c)
    y = outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=-1)
    if not self.first:
      y = self._combine(x, u, y, 'norm')
      if self.ffn_factor:
        z = self._norm('ffn_norm')(y) if self.block == 'prenorm' else y
        ffn = FeedForward(max(1, round(self.ffn_factor * y.shape[-1])), self.ffn_activation,
                          self.ffn_gated, self.cell.get('dtype'), self.cell['param_dtype'],
                          name='ffn')
        y = self._combine(y, z, ffn(z), 'ffn_norm')
    return y, (tuple(carries) if self.bidirectional else carries[0])

  def _combine(self, skip: Array, branch_input: Array, out: Array, norm_name: str) -> Array:
    """A sublayer's output from its input `skip`, its branch's input and the branch's `out`."""
    if self.block == 'plain':
      return out
    if self.block == 'residual_op_on_skip':
      return out + branch_input
    if self.block == 'postnorm':
      return self._norm(norm_name)(out + skip)
    return out + skip


class StackedLSTM(CellOptions):
  """A stack of LSTM layers over batch-major input (B, T, F), with a block between layers.

  `outputs, carries = model.apply(variables, x, seq_lengths=None, initial_carry=None,
  deterministic=True, segment_starts=None, rngs={'dropout': key})`. The carry of a layer is
  `(h, c)` (PyTorch's order; Flax's own cells use `(c, h)`: `h, c = carry` then `(c, h)`).
  `carries` is a tuple with one entry per layer: (h, c), or ((h, c) forward, (h, c) backward)
  when bidirectional. Outputs past a sequence's length are zero. `deterministic=False` turns on
  dropout and the cells' training-time options (recurrent_dropout, zoneout, weight_drop), which
  draw from the 'dropout' RNG stream.

  `segment_starts` (B, T) bool marks the steps where a new segment (document, episode) begins in a
  row: every layer resets its carry to zero before such a step, and a backward direction before
  the last step of each segment, where its own reading of the segment begins. A direction's
  `initial_carry` is that of the segment it reads first: the first (mark step 0 to drop it), or
  the last for a direction that runs backwards. Marks past a sequence's length are ignored. Each
  segment then gives the outputs it gives alone.

  The blocks (`block`, `between`, `norm`, `ffn_*`, `dropout`) are written out as equations in
  this module's docstring (`help(lstm.stack)`).

  Attributes:
    num_layers: number of layers (taken from `cells` when that is given).
    hidden_size: features of every layer's cell (H).
    cells: optional per-layer overrides of the cell options, one mapping per layer, e.g.
      `({'features': 512}, {'features': 256, 'activation': 'relu'})`.
    bidirectional: each layer runs both directions and concatenates them (PyTorch's layout).
    reverse: the (forward) direction runs from the end of each sequence.
    between: the op on a block's branch input: 'none' (default), an activation name, a norm name
      ('layernorm', 'rmsnorm'), or a callable.
    block: the form of layers 2..L: 'plain' (default), 'residual', 'residual_op_on_skip',
      'prenorm' or 'postnorm' (see above). The residual forms need equal layer widths.
    norm: the norm of 'prenorm' and 'postnorm' blocks: 'layernorm' (default) or 'rmsnorm'.
    ffn_factor: > 0 adds a feed-forward sublayer of inner width ffn_factor * width to each block.
    ffn_activation: the feed-forward sublayer's activation ('gelu' by default).
    ffn_gated: the feed-forward sublayer is gated (xLSTM's gated MLP; GLU family).
    dropout: dropout rate on a block's branch input (between layers; not after the last one).
    variational: one dropout mask per sequence, shared over time (locked dropout, AWD-LSTM).
    scan_layers: run layers 2..L with `nn.scan` (they must be identical); compile time stays flat.
    remat: recompute activations in the backward pass (per layer and per step) to save memory.
    The cell options are `lstm.CellOptions`' (keyword-only), shared by every layer: activations,
    peepholes, projection, clipping, layer norm, the gate variants (input_gate, forget_gate,
    output_gate, coupled_gates, candidate_activation, output_activation) and the recurrent
    regularisers (recurrent_dropout, zoneout_cell, zoneout_hidden, weight_drop).
  """
  num_layers: int = 1
  hidden_size: Optional[int] = None
  cells: Optional[Sequence[Mapping[str, Any]]] = None
  bidirectional: bool = False
  reverse: bool = False
  between: Between = 'none'
  block: str = 'plain'
  norm: str = 'layernorm'
  ffn_factor: float = 0.0
  ffn_activation: activations.Activation = 'gelu'
  ffn_gated: bool = False
  dropout: float = 0.0
  variational: bool = False
  scan_layers: bool = False
  remat: bool = False

  def __post_init__(self):
    self._validate()
    super().__post_init__()

  @nn.nowrap  # called from __post_init__, before the module is bound (tabulate)
  def _validate(self):
    if self.cells is None:
      if isinstance(self.num_layers, bool) or not isinstance(self.num_layers, int) \
          or self.num_layers < 1:
        raise ValueError(f'num_layers must be a positive integer, got {self.num_layers!r}')
      if self.hidden_size is None:
        raise ValueError('hidden_size is required: give hidden_size=N, or cells with one mapping '
                         'of cell options per layer')
    else:
      self._validate_cells()
    _check_between(self.between)
    _check_block(self.block, self.norm, self.ffn_factor, self.ffn_activation)
    checks.check_rate('dropout', self.dropout)
    configs = [self.cell_config(i) for i in range(self.depth)]
    for i, config in enumerate(configs):
      checks.check_cell_options(config, lambda option, i=i: self.option_name(i, option))
    widths = [self.output_width(c) for c in configs]
    if self.block in RESIDUAL_BLOCKS and len(set(widths)) > 1:
      k = next(k for k in range(1, len(widths)) if widths[k] != widths[0])
      raise ValueError(f'block={self.block!r} needs every layer to output the same width, but cells[{k}] '
                       f'outputs {widths[k]} and cells[0] {widths[0]} (all: {widths}); give every '
                       'layer the same features and proj_size')
    if self.scan_layers:
      for k in range(2, len(configs)):
        differ = sorted(o for o in configs[1] if configs[k][o] != configs[1][o])
        if differ:
          raise ValueError('scan_layers=True runs cells[1:] as one scanned layer, so they need '
                           f'identical options, but cells[{k}] differs from cells[1] in {differ}')

  @nn.nowrap
  def _validate_cells(self):
    cells = self.cells
    if isinstance(cells, (str, Mapping)) or not isinstance(cells, Sequence) or not cells:
      got = 'an empty sequence' if isinstance(cells, Sequence) and not cells \
          else type(cells).__name__
      raise ValueError('cells must be a sequence with one mapping of cell options per layer, '
                       "e.g. ({'features': 64}, {'features': 32}), " f'got {got}')
    if self.num_layers not in (1, len(cells)):
      raise ValueError(f'num_layers={self.num_layers} disagrees with len(cells)={len(cells)}: '
                       f'leave num_layers out or give num_layers={len(cells)}')
    for i, overrides in enumerate(cells):
      if not isinstance(overrides, Mapping):
        raise ValueError(f'cells[{i}] must be a mapping of cell options, e.g. '
                         "{'features': 64}, " f'got {type(overrides).__name__}')
      unknown = set(overrides) - set(CELL_FIELDS)
      if unknown:
        raise ValueError(f'cells[{i}] has unknown option(s) {sorted(unknown)}; '
                         f'valid: {", ".join(CELL_FIELDS)}')
      if self.hidden_size is None and 'features' not in overrides:
        raise ValueError(f"cells[{i}] has no 'features' and hidden_size is not given: set "
                         f"cells[{i}]['features'] or hidden_size")

  @classmethod
  def stack_options(cls) -> tuple[str, ...]:
    """The stack's own options (not the cells'), in declaration order."""
    return tuple(f.name for f in dataclasses.fields(cls)
                 if f.name not in OPTIONS and f.name not in ('parent', 'name'))

  def deviations(self) -> dict[str, Any]:
    """The stack options that differ from their declared defaults and are in effect."""
    defaults = {f.name: f.default for f in dataclasses.fields(type(self))}
    return {name: getattr(self, name) for name in self.stack_options()
            if getattr(self, name) != defaults[name] and (name not in NEEDS or NEEDS[name](self))}

  @nn.nowrap
  def option_name(self, layer: int, option: str) -> str:
    """How the caller spelled LSTMCell option `option` of `layer`: `cells[1]['proj_size']` for a
    per-layer override, otherwise the stack's own attribute (`hidden_size` for `features`)."""
    if self.cells is not None and option in self.cells[layer]:
      return f'cells[{layer}][{option!r}]'
    return 'hidden_size' if option == 'features' else option

  @property
  def depth(self) -> int:
    return len(self.cells) if self.cells is not None else self.num_layers

  @nn.nowrap
  def cell_config(self, layer: int) -> dict[str, Any]:
    """The LSTMCell keyword arguments of `layer`: shared options, then that layer's overrides."""
    config = {name: getattr(self, name) for name in CELL_FIELDS if name != 'features'}
    config['features'] = self.hidden_size
    if self.cells is not None:
      config.update(self.cells[layer])
    return config

  @nn.nowrap
  def output_width(self, config: Mapping[str, Any]) -> int:
    width = config.get('proj_size') or config['features']
    return 2 * width if self.bidirectional else width

  def _layer(self, i: int, deterministic: bool, first: bool, module=_Layer, **kwargs):
    return module(cell=self.cell_config(i), first=first, bidirectional=self.bidirectional,
                  reverse=self.reverse, between=self.between, block=self.block, norm=self.norm,
                  ffn_factor=self.ffn_factor, ffn_activation=self.ffn_activation,
                  ffn_gated=self.ffn_gated, dropout=self.dropout, variational=self.variational,
                  remat=self.remat, deterministic=deterministic, **kwargs)

  @nn.compact
  def __call__(self, x: Array, seq_lengths: Optional[Array] = None,
               initial_carry: Optional[Sequence[Any]] = None,
               deterministic: Optional[bool] = None,
               segment_starts: Optional[Array] = None) -> tuple[Array, tuple[Any, ...]]:
    """Runs the stack.

    Args:
      x: inputs (B, T, F).
      seq_lengths: (B,) int lengths; outputs past them are zero and the carries stop there.
      initial_carry: one carry per layer: `(h, c)`, h first (Flax's cells use `(c, h)`:
        `h, c = carry; flax_carry = (c, h)`), or `((h, c) forward, (h, c) backward)` when
        bidirectional; None: zeros.
      deterministic: False turns on dropout and the cells' training-time options (draws from
        `rngs={'dropout': key}`), True evaluates; required when any of them is set.
      segment_starts: (B, T) bool, steps before which every layer's carry restarts from zero.

    Returns:
      `(outputs (B, T, width), carries)`, carries laid out as `initial_carry`.
    """
    options = ([f'dropout={self.dropout}'] if self.dropout else []) + [
        o for i in range(self.depth) for o in training_options(self.cell_config(i))]
    deterministic = resolve_deterministic(deterministic, sorted(set(options)), 'StackedLSTM',
                                          self.is_initializing())
    checks.check_inputs(x, seq_lengths, self._input_width())
    checks.check_segment_starts(x, segment_starts)
    self._check_initial_carry(initial_carry, x.shape[0])
    y = jnp.swapaxes(x, 0, 1)
    mask = time_mask(seq_lengths, y.shape[0])
    starts = None if segment_starts is None else jnp.swapaxes(segment_starts, 0, 1)
    layer_cls = nn.remat(_Layer, static_argnums=()) if self.remat else _Layer
    carry = None if initial_carry is None else initial_carry[0]
    y, first_carry = self._layer(0, deterministic, True, layer_cls, name='layer_0')(
        y, mask, seq_lengths, carry, starts)
    carries = [first_carry]
    if self.depth > 1 and self.scan_layers:
      y, rest = self._scanned(y, mask, seq_lengths, starts, initial_carry, deterministic,
                              layer_cls)
      carries.extend(rest)
    else:
      for i in range(1, self.depth):
        carry = None if initial_carry is None else initial_carry[i]
        y, c = self._layer(i, deterministic, False, layer_cls, name=f'layer_{i}')(
            y, mask, seq_lengths, carry, starts)
        carries.append(c)
    if self.block == 'prenorm':
      y = norms.make(self.norm, self.dtype, self.param_dtype, 'final_norm')(y)
    if mask is not None:
      y = jnp.where(mask[..., None], y, jnp.zeros((), y.dtype))
    return jnp.swapaxes(y, 0, 1), tuple(carries)

  def _input_width(self) -> Optional[int]:
    """The input features the variables were made for; None before they exist (init)."""
    params = self.variables.get('params', {})
    first = params.get('layer_0', {}).get('forward', {})
    return first['kernel'].shape[0] if 'kernel' in first else None

  def _check_initial_carry(self, initial_carry, batch: int) -> None:
    if initial_carry is None:
      return
    if not isinstance(initial_carry, (tuple, list)) or len(initial_carry) != self.depth:
      raise ValueError(f'initial_carry must hold one carry per layer ({self.depth}), got '
                       f'{checks.describe(initial_carry)}')
    for i, carry in enumerate(initial_carry):
      config = self.cell_config(i)
      widths = (batch, config['features'], config['proj_size'] or config['features'])
      if not self.bidirectional:
        checks.check_carry(carry, f'initial_carry[{i}]', *widths)
        continue
      if not isinstance(carry, (tuple, list)) or len(carry) != 2:
        raise ValueError(f'initial_carry[{i}] must be a (forward, backward) pair of (h, c) '
                         f'carries (bidirectional=True), got {checks.describe(carry)}')
      for j in range(2):
        checks.check_carry(carry[j], f'initial_carry[{i}][{j}]', *widths)

  def _scanned(self, y, mask, seq_lengths, starts, initial_carry, deterministic, layer_cls):
    n = self.depth - 1
    if initial_carry is None:
      cell = LSTMCell(**self.cell_config(1), parent=None)
      one = zero_carry(cell, y.shape[1], y.dtype)
      one = (one, one) if self.bidirectional else one
      stacked = jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + a.shape), one)
    else:
      stacked = jax.tree.map(lambda *a: jnp.stack(a), *initial_carry[1:])

    def body(layer, y, carry):
      return layer(y, mask, seq_lengths, carry, starts)

    scan = nn.scan(body, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
                   in_axes=0, out_axes=0, length=n)
    y, finals = scan(self._layer(1, deterministic, False, layer_cls, name='layers'), y, stacked)
    return y, [jax.tree.map(lambda a: a[i], finals) for i in range(n)]


def looped_to_scanned(params: Mapping[str, Any]) -> dict[str, Any]:
  """Parameters of a looped stack -> those of the same stack with `scan_layers=True`."""
  params = dict(params)
  rest = sorted((k for k in params if k.startswith('layer_') and k != 'layer_0'),
                key=lambda k: int(k.split('_')[1]))
  if not rest:
    return params
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *[params.pop(k) for k in rest])
  params['layers'] = stacked
  return params


def scanned_to_looped(params: Mapping[str, Any]) -> dict[str, Any]:
  """Parameters of a stack with `scan_layers=True` -> those of the looped stack."""
  params = dict(params)
  if 'layers' not in params:
    return params
  stacked = params.pop('layers')
  n = jax.tree.leaves(stacked)[0].shape[0]
  for i in range(n):
    params[f'layer_{i + 1}'] = jax.tree.map(lambda a: a[i], stacked)
  return params
