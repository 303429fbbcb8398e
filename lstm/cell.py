"""`LSTMCell`: the parameters of one LSTM cell and its two pure pieces of math.

A layer calls `weights(in_features)` once, `project_inputs` once for every time step together
(one matmul outside the time loop) and `step` inside the loop. `__call__(carry, x)` does both for
one step, so the cell also works with `flax.linen.RNN`.

Gate order is i, f, g, o in column blocks of one fused kernel (PyTorch's and Keras' order).
The carry is (h, c); h has `proj_size` features when a projection is used.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from lstm import activations

Array = jax.Array
Carry = tuple[Array, Array]
Initializer = Callable[..., Array]


class CellWeights(NamedTuple):
  """The arrays of one cell, already cast to the compute dtype. Absent options are None."""
  kernel: Array                       # (in, 4H)
  recurrent_kernel: Array             # (P or H, 4H)
  bias: Optional[Array]               # (4H,)
  peephole: Optional[Array]           # (3, H): i, f, o
  proj_kernel: Optional[Array]        # (H, P)
  ln_input_scale: Optional[Array]     # (4H,)
  ln_recurrent_scale: Optional[Array]  # (4H,)
  ln_cell_scale: Optional[Array]      # (H,)
  ln_cell_bias: Optional[Array]       # (H,)


def _check_positive(name: str, value, allow_none: bool = False):
  if value is None and allow_none:
    return
  if isinstance(value, bool) or not isinstance(value, (int,)) or value <= 0:
    raise ValueError(f'{name} must be a positive integer, got {value!r}')


def _check_clip(name: str, value):
  if value is not None and not (isinstance(value, (int, float)) and value > 0):
    raise ValueError(f'{name} must be None or a positive number, got {value!r}')


def _gate_norm(z: Array, scale: Array, bias: Optional[Array], groups: int, eps: float) -> Array:
  """Layer norm applied separately to each of `groups` equal blocks of the last axis."""
  shape = z.shape
  zg = z.reshape(shape[:-1] + (groups, shape[-1] // groups))
  zg = zg.astype(jnp.promote_types(z.dtype, jnp.float32))
  mean = zg.mean(-1, keepdims=True)
  var = jnp.square(zg - mean).mean(-1, keepdims=True)
  normed = ((zg - mean) * jax.lax.rsqrt(var + eps)).reshape(shape).astype(z.dtype)
  normed = normed * scale
  return normed if bias is None else normed + bias


def _forget_bias_init(base: Initializer, features: int, forget_bias: float) -> Initializer:
  def init(key, shape, dtype=jnp.float32):
    b = base(key, shape, dtype)
    return b.at[features:2 * features].add(jnp.asarray(forget_bias, dtype))
  return init


class LSTMCell(nn.Module):
  """An LSTM cell with Keras-style activations, peepholes, projection, clipping and layer norm.

  Attributes:
    features: hidden size H (the size of c).
    activation: candidate and output activation, as Keras' `activation` (name or callable).
    recurrent_activation: gate activation, as Keras' `recurrent_activation`.
    use_bias: whether the gates have a bias.
    forget_bias: initial value of the forget-gate bias (1 as Jozefowicz et al.; 0 as Zaremba).
    peephole: Graves' diagonal peephole connections from c to the i, f (old c) and o (new c) gates.
    proj_size: LSTMP projection of h to this size (PyTorch `proj_size`, ELMo); must be < features.
    cell_clip: clip c to [-cell_clip, cell_clip] after each update (ELMo).
    proj_clip: clip the projected h to [-proj_clip, proj_clip] (ELMo).
    layer_norm: layer norm (Ba et al. 2016) on each gate's input and recurrent pre-activations and
      on c before the output activation.
  """
  features: int
  activation: activations.Activation = 'tanh'
  recurrent_activation: activations.Activation = 'sigmoid'
  use_bias: bool = True
  forget_bias: float = 1.0
  peephole: bool = False
  proj_size: Optional[int] = None
  cell_clip: Optional[float] = None
  proj_clip: Optional[float] = None
  layer_norm: bool = False
  layer_norm_epsilon: float = 1e-5
  kernel_init: Initializer = nn.initializers.glorot_uniform()
  recurrent_kernel_init: Initializer = nn.initializers.orthogonal()
  bias_init: Initializer = nn.initializers.zeros_init()
  dtype: Optional[Any] = None
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    _check_positive('features', self.features)
    _check_positive('proj_size', self.proj_size, allow_none=True)
    if self.proj_size is not None and self.proj_size >= self.features:
      raise ValueError(f'proj_size must be smaller than features (hidden size {self.features}), '
                       f'got proj_size={self.proj_size}')
    if self.proj_clip is not None and self.proj_size is None:
      raise ValueError('proj_clip needs a projection: set proj_size as well')
    _check_clip('cell_clip', self.cell_clip)
    _check_clip('proj_clip', self.proj_clip)
    activations.get(self.activation, 'activation')
    activations.get(self.recurrent_activation, 'recurrent_activation')
    super().__post_init__()

  @property
  def carry_features(self) -> int:
    """Size of h, which is what the cell outputs and feeds back."""
    return self.proj_size or self.features

  @nn.compact
  def weights(self, in_features: int) -> CellWeights:
    """Creates (at init) or reads the parameters; returns them cast to the compute dtype."""
    h, p = self.features, self.carry_features
    param = lambda name, init, shape: self.param(name, init, shape, self.param_dtype)
    ones = nn.initializers.ones_init()
    kernel = param('kernel', self.kernel_init, (in_features, 4 * h))
    recurrent = param('recurrent_kernel', self.recurrent_kernel_init, (p, 4 * h))
    bias = (param('bias', _forget_bias_init(self.bias_init, h, self.forget_bias), (4 * h,))
            if self.use_bias else None)
    peephole = param('peephole', nn.initializers.zeros_init(), (3, h)) if self.peephole else None
    proj = param('proj_kernel', self.kernel_init, (h, p)) if self.proj_size else None
    ln = [None] * 4
    if self.layer_norm:
      ln = [param('ln_input_scale', ones, (4 * h,)), param('ln_recurrent_scale', ones, (4 * h,)),
            param('ln_cell_scale', ones, (h,)),
            param('ln_cell_bias', nn.initializers.zeros_init(), (h,))]
    arrays = [kernel, recurrent, bias, peephole, proj, *ln]
    if self.dtype is not None:
      arrays = [None if a is None else a.astype(self.dtype) for a in arrays]
    return CellWeights(*arrays)

  @nn.nowrap
  def project_inputs(self, w: CellWeights, x: Array) -> Array:
    """Input half of the gate pre-activations, (..., in) -> (..., 4H); any leading axes."""
    if self.dtype is not None:
      x = x.astype(self.dtype)
    z = jnp.dot(x, w.kernel)
    if self.layer_norm:
      z = _gate_norm(z, w.ln_input_scale, None, 4, self.layer_norm_epsilon)
    if w.bias is not None:
      z = z + w.bias
    return z

  @nn.nowrap
  def step(self, w: CellWeights, carry: Carry, z: Array) -> tuple[Carry, Array]:
    """One recurrent update from the projected input `z` (B, 4H); returns (new carry, h)."""
    act = activations.get(self.activation)
    gate = activations.get(self.recurrent_activation)
    h_prev, c_prev = carry
    r = jnp.dot(h_prev, w.recurrent_kernel)
    if self.layer_norm:
      r = _gate_norm(r, w.ln_recurrent_scale, None, 4, self.layer_norm_epsilon)
    zi, zf, zg, zo = jnp.split(z + r, 4, axis=-1)
    if w.peephole is not None:
      zi = zi + w.peephole[0] * c_prev
      zf = zf + w.peephole[1] * c_prev
    c = gate(zf) * c_prev + gate(zi) * act(zg)
    if self.cell_clip is not None:
      c = jnp.clip(c, -self.cell_clip, self.cell_clip)
    if w.peephole is not None:
      zo = zo + w.peephole[2] * c
    c_out = c
    if self.layer_norm:
      c_out = _gate_norm(c, w.ln_cell_scale, w.ln_cell_bias, 1, self.layer_norm_epsilon)
    h = gate(zo) * act(c_out)
    if w.proj_kernel is not None:
      h = jnp.dot(h, w.proj_kernel)
      if self.proj_clip is not None:
        h = jnp.clip(h, -self.proj_clip, self.proj_clip)
    return (h, c), h

  def __call__(self, carry: Carry, inputs: Array) -> tuple[Carry, Array]:
    """One time step, in the `flax.linen.RNN` cell interface."""
    w = self.weights(inputs.shape[-1])
    return self.step(w, carry, self.project_inputs(w, inputs))

  @nn.nowrap
  def initialize_carry(self, rng, input_shape: tuple[int, ...]) -> Carry:
    """Zero (h, c) for inputs of shape (*batch, in_features); `rng` is unused."""
    del rng
    batch = tuple(input_shape[:-1])
    dtype = self.dtype or self.param_dtype
    return (jnp.zeros(batch + (self.carry_features,), dtype),
            jnp.zeros(batch + (self.features,), dtype))

  @property
  def num_feature_axes(self) -> int:
    return 1
