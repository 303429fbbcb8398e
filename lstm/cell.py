"""`LSTMCell`: the parameters of one LSTM cell, its training-time masks and its pure math.

A layer calls `weights(in_features)` once, `noise(...)` once (the masks of the training-time
options, drawn for the whole sequence), `project_inputs` once for every time step together
(one matmul outside the time loop) and `step` inside the loop. `__call__(carry, x)` does the
deterministic step for one step, so the cell also works with `flax.linen.RNN`.

Gate order is i, f, g, o in column blocks of one fused kernel (PyTorch's and Keras' order).
The carry is (h, c); h has `proj_size` features when a projection is used.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from lstm import activations, checks

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


class Noise(NamedTuple):
  """The training-time masks of one layer call, drawn before the time loop; None where unused.

  Dropout masks hold 0 or 1/(1-p); zoneout masks hold 1 where the unit keeps its previous value,
  indexed by the step of the loop (a reversed layer's reading order). `step` takes this with the
  zoneout fields sliced to its own time step, (B, .).
  """
  recurrent: Optional[Array]       # (B, P): recurrent dropout on h_{t-1}, one mask per sequence
  weight: Optional[Array]          # (P, 4H): weight drop on recurrent_kernel, one mask per call
  zoneout_cell: Optional[Array]    # (T, B, H)
  zoneout_hidden: Optional[Array]  # (T, B, P)


NO_NOISE = Noise(None, None, None, None)


def _dropout_mask(key, rate: float, shape, dtype) -> Optional[Array]:
  if rate == 0:
    return None
  keep = jax.random.bernoulli(key, 1.0 - rate, shape)
  return keep.astype(dtype) / jnp.asarray(1.0 - rate, dtype)


def _zoneout_mask(key, rate: float, shape, dtype) -> Optional[Array]:
  return jax.random.bernoulli(key, rate, shape).astype(dtype) if rate else None


def _zone(old: Array, new: Array, rate: float, keep: Optional[Array]) -> Array:
  """Zoneout: each unit keeps `old` where `keep` is 1 (training); without a mask, the
  expectation rate * old + (1 - rate) * new."""
  if keep is None:
    if rate == 0:
      return new
    keep = rate
  return keep * old + (1 - keep) * new


def restart(reset: Optional[Array], arrays: tuple[Array, ...],
            feature_axis: int = -1) -> tuple[Array, ...]:
  """`arrays` (a carry, or its cotangents) with zeros where the bool `reset` is True; `reset` has
  the arrays' shape without their `feature_axis`."""
  if reset is None:
    return arrays
  reset = jnp.expand_dims(reset, feature_axis)
  return tuple(jnp.where(reset, jnp.zeros((), a.dtype), a) for a in arrays)


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


def _option(default):
  """A cell option: keyword-only, so subclasses may declare positional fields of their own."""
  return dataclasses.field(default=default, kw_only=True)


class CellOptions(nn.Module):
  """The options of an LSTM cell, declared once: `LSTMCell` and `StackedLSTM` both take them
  (keyword-only), and the trainer's `config.model`, validation, interop and export read them
  from here. The defaults are the canonical LSTM.

  Attributes:
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
    candidate_activation: activation of the candidate g; None uses `activation`. 'linear' is
      Greff's NIAF variant.
    output_activation: activation of c in h = o * act(c); None uses `activation`. 'linear' is
      Greff's NOAF variant.
    input_gate, forget_gate, output_gate: False makes that gate the constant 1 (Greff's NIG,
      NFG, NOG). The parameters keep their shapes, so weights import and export alike for every
      variant; the unused gate's kernel, bias and peephole columns get zero gradients.
    coupled_gates: the input gate is 1 - f (CIFG); the input gate's columns are unused likewise.
    recurrent_dropout: dropout on h_{t-1} where it enters the recurrent kernel, as Keras'
      `recurrent_dropout` (Gal & Ghahramani 2016): one mask per sequence for all steps, shared by
      the four gates, scaled by 1/(1-p). (Keras 3 draws a separate mask for each gate.)
    zoneout_cell, zoneout_hidden: zoneout (Krueger et al. 2016) of c and h: in training each unit
      keeps its previous value with this probability, c_t = d * c_{t-1} + (1 - d) * c_new, d drawn
      per unit and step; deterministic, the expectation z * old + (1 - z) * new. h_new is computed
      from c_new (before c is zoned), as in the paper; the output is the zoned h.
    weight_drop: DropConnect on `recurrent_kernel` (AWD-LSTM): one mask per call, for the whole
      batch and every step, scaled by 1/(1-p).
  """
  activation: activations.Activation = _option('tanh')
  recurrent_activation: activations.Activation = _option('sigmoid')
  use_bias: bool = _option(True)
  forget_bias: float = _option(1.0)
  peephole: bool = _option(False)
  proj_size: Optional[int] = _option(None)
  cell_clip: Optional[float] = _option(None)
  proj_clip: Optional[float] = _option(None)
  layer_norm: bool = _option(False)
  layer_norm_epsilon: float = _option(1e-5)
  candidate_activation: Optional[activations.Activation] = _option(None)
  output_activation: Optional[activations.Activation] = _option(None)
  input_gate: bool = _option(True)
  forget_gate: bool = _option(True)
  output_gate: bool = _option(True)
  coupled_gates: bool = _option(False)
  recurrent_dropout: float = _option(0.0)
  zoneout_cell: float = _option(0.0)
  zoneout_hidden: float = _option(0.0)
  weight_drop: float = _option(0.0)
  kernel_init: Initializer = _option(nn.initializers.glorot_uniform())
  recurrent_kernel_init: Initializer = _option(nn.initializers.orthogonal())
  bias_init: Initializer = _option(nn.initializers.zeros_init())
  dtype: Optional[Any] = _option(None)
  param_dtype: Any = _option(jnp.float32)


OPTIONS = tuple(f.name for f in dataclasses.fields(CellOptions) if f.name not in ('parent', 'name'))
DEFAULTS = {f.name: f.default for f in dataclasses.fields(CellOptions) if f.name in OPTIONS}
# Options that change nothing unless the option they name is on.
NEEDS = {'layer_norm_epsilon': 'layer_norm', 'proj_clip': 'proj_size'}


def in_effect(options, option: str) -> bool:
  """Whether `option` of a cell with `options` (a mapping of every option) changes what it
  computes beyond its default."""
  return option not in NEEDS or bool(options[NEEDS[option]])


class LSTMCell(CellOptions):
  """An LSTM cell with Keras-style activations, peepholes, projection, clipping, layer norm,
  recurrent regularisers and the gate variants of Greff et al. 2017.

  The defaults are the canonical LSTM: c_t = f * c_{t-1} + i * act(g), h_t = o * act(c_t).

  Attributes:
    features: hidden size H (the size of c).
    The cell options are `CellOptions`' (keyword-only): activations, peepholes, projection,
    clipping, layer norm, the gate variants and the recurrent regularisers.
    The training-time options (recurrent_dropout, zoneout, weight_drop) act when a layer runs
    with deterministic=False and draw from the 'dropout' RNG stream; `__call__` (one step, for
    `flax.linen.RNN`) is deterministic.
  """
  features: int

  def __post_init__(self):
    checks.check_cell_options({field.name: getattr(self, field.name)
                               for field in dataclasses.fields(self)})
    super().__post_init__()

  @property
  def carry_features(self) -> int:
    """Size of h, which is what the cell outputs and feeds back."""
    return self.proj_size or self.features

  @property
  def candidate_fn(self) -> Callable[[Array], Array]:
    return activations.get(self.activation if self.candidate_activation is None
                           else self.candidate_activation)

  @property
  def output_fn(self) -> Callable[[Array], Array]:
    return activations.get(self.activation if self.output_activation is None
                           else self.output_activation)

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

  def noise(self, steps: int, batch: int, deterministic: bool) -> Noise:
    """The masks of the training-time options for `steps` x `batch` (NO_NOISE when deterministic
    or when none is set), from the 'dropout' RNG stream."""
    if deterministic or not (self.recurrent_dropout or self.weight_drop or self.zoneout_cell
                             or self.zoneout_hidden):
      return NO_NOISE
    return self.draw_noise(self.make_rng('dropout'), steps, batch)

  @nn.nowrap
  def draw_noise(self, key, steps: int, batch: int) -> Noise:
    """The masks `noise` draws from `key`: each option has its own part of the key, so one
    option's mask does not depend on which other options are set."""
    h, p = self.features, self.carry_features
    dtype = self.dtype or self.param_dtype
    k_rec, k_weight, k_cell, k_hidden = jax.random.split(key, 4)
    return Noise(_dropout_mask(k_rec, self.recurrent_dropout, (batch, p), dtype),
                 _dropout_mask(k_weight, self.weight_drop, (p, 4 * h), dtype),
                 _zoneout_mask(k_cell, self.zoneout_cell, (steps, batch, h), dtype),
                 _zoneout_mask(k_hidden, self.zoneout_hidden, (steps, batch, p), dtype))

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
  def step(self, w: CellWeights, carry: Carry, z: Array,
           noise: Noise = NO_NOISE) -> tuple[Carry, Array]:
    """One recurrent update from the projected input `z` (B, 4H); returns (new carry, h).

    `noise` holds this step's masks (zoneout fields (B, .)); weight drop is already in `w`.
    """
    gate = activations.get(self.recurrent_activation)
    h_prev, c_prev = carry
    h_in = h_prev if noise.recurrent is None else h_prev * noise.recurrent
    r = jnp.dot(h_in, w.recurrent_kernel)
    if self.layer_norm:
      r = _gate_norm(r, w.ln_recurrent_scale, None, 4, self.layer_norm_epsilon)
    zi, zf, zg, zo = jnp.split(z + r, 4, axis=-1)
    if w.peephole is not None:
      zi = zi + w.peephole[0] * c_prev
      zf = zf + w.peephole[1] * c_prev
    f = gate(zf) if self.forget_gate else 1.0
    i = 1 - f if self.coupled_gates else (gate(zi) if self.input_gate else 1.0)
    c = f * c_prev + i * self.candidate_fn(zg)
    if self.cell_clip is not None:
      c = jnp.clip(c, -self.cell_clip, self.cell_clip)
    if w.peephole is not None:
      zo = zo + w.peephole[2] * c
    c_out = c
    if self.layer_norm:
      c_out = _gate_norm(c, w.ln_cell_scale, w.ln_cell_bias, 1, self.layer_norm_epsilon)
    o = gate(zo) if self.output_gate else 1.0
    h = o * self.output_fn(c_out)
    if w.proj_kernel is not None:
      h = jnp.dot(h, w.proj_kernel)
      if self.proj_clip is not None:
        h = jnp.clip(h, -self.proj_clip, self.proj_clip)
    c = _zone(c_prev, c, self.zoneout_cell, noise.zoneout_cell)
    h = _zone(h_prev, h, self.zoneout_hidden, noise.zoneout_hidden)
    return (h, c), h

  def __call__(self, carry: Carry, inputs: Array) -> tuple[Carry, Array]:
    """One deterministic time step (zoneout in expectation), in the `flax.linen.RNN` interface."""
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
