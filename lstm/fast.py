"""Fast path for one LSTM layer over time: input projection and time loop under custom VJPs.

`run_sequence` (lstm/layer.py) calls `run_layer` here when `supports(...)` holds, and otherwise
runs its reference `lax.scan`, which the tests compare this path against. The function computed
is the same; what differs is the work and memory around it (each point measured, see bench/):

* On the CPU, a float32 layer with tanh/sigmoid gates, H a multiple of 16 and no segment resets,
  recurrent dropout or coupled gates runs its time loops in `lstm.native`'s compiled kernel
  (inputs projected inside the forward loop; the backward loop yields dz, from which the weight
  and input gradients are formed here as below); so does such a bfloat16 layer where the CPU has
  AVX512-BF16 (`lstm.native.bf16_available()`), storing what the XLA loops store in the dtypes
  they store it. The rest of this list is about the XLA loops that run every other layer (bfloat16
  ones on CPUs without AVX512-BF16 included), and every layer where the kernel cannot be built.
* Inference (nothing differentiated: the custom VJP's primal) on CPU, for the shapes where it
  was measured faster on this machine (`feature_major_pays`, `lstm.loop_order`: measured once per
  CPU and shape, cached), runs one feature-major loop: carries (H, B), inputs
  (T, F, B), and each step computes kernel^T x_t + w^T h. XLA:CPU runs these (4H, K) by (K, B)
  products markedly faster than the batch-major x_t kernel and h w at such sizes, and projecting
  inside the loop spares writing and reading a (T, B, 4H) z. The gates are a (4, H, B) view,
  each one contiguous block. Smaller layers, and accelerators, run batch-major like training.
* Training projects the inputs of all steps with one matmul before the loop. The bias is added
  inside the loop, where it is free, instead of in a pass over the (T, B, 4H) array.
* sigmoid(x) is computed as tanh(x/2)/2 + 1/2, and the four gates as one tanh over the (B, 4H)
  block with per-column scale and offset: XLA:CPU's logistic is several times slower than its
  tanh, and one wide elementwise op beats four narrow ones.
* Training runs a forward loop that keeps only what the backward needs, time-major: the gate
  activations (the pre-activations for activations other than tanh/sigmoid) and the carries
  after every step. The gates are written over z[t], which is dead by then, and the backward
  loop writes the gate-gradients dz[t] over the gates of step t; each loop reads slot t+1 (t-1)
  only after writing slot t, which is the order that lets XLA update the buffer in place (reading
  and writing the same slot in one iteration makes it copy the whole buffer every step). No
  zero-filled (T, B, 4H) scan outputs, and about 40% less temp memory; on CPU every step
  page-faults its whole temp allocation, so memory is time.
* Every weight gradient is one 2-D matmul with K = T*B (h_prev^T dz, x^T dz), the small operand
  transposed explicitly behind an optimization barrier (otherwise XLA:CPU folds the transpose
  into a slower dot, or transposes the 4x larger dz); the bias gradient is a sum of dz.
* Elementwise math runs in float32 when the compute dtype is narrower (bfloat16), and the loop
  matmuls accumulate in float32; buffers and carries stay in the compute dtype.
* With `remat`, a layer keeps only its input (T, B, F) and recomputes projection and forward
  loop in its backward, tied to its output cotangents by a data dependency (see `_after`).

Transformations. Every path composes with `jit`, `grad` of any order (reverse over reverse
and forward over reverse), `vmap`, `jax.checkpoint`, `shard_map` with `check_vma` (the custom
rules give each cotangent its primal's varying axes), `jax.export` (symbolic batch and time
included) and lowering for any platform from any host (tests/test_transforms.py runs the
matrix). Forward-mode autodiff (`jax.jvp`, `jax.jacfwd`, `jax.hessian`, `jax.linearize`) is
not defined through a `custom_vjp`, so a layer traced under it takes the reference path by
itself (`forward_mode`); reverse mode keeps the fast path. Where the forward-mode trace cannot
be seen (a jaxpr differentiated after it was traced, e.g. `jax.jvp` of `jax.core.eval_jaxpr`
of one), JAX says "can't apply forward-mode autodiff (jvp) to a custom_vjp function": trace
that code inside `lstm.fast.reference_path()`. The CPU kernel is taken per platform when a
program is lowered (`lstm.native`): a program lowered for `cuda` or `tpu`, or exported, runs
XLA loops that compute the same function.

Supported: padding masks (carry frozen past a sequence's length, outputs zero), an initial carry
and its gradient, any activation, candidate/output activation and recurrent activation (registry
name or callable: derivatives by `jax.vjp` from the saved pre-activations, closed forms for
tanh/sigmoid), coupled input and forget gates (CIFG), segment resets (the carry zeroed before
marked steps, a select per step each way), recurrent dropout (a (B, H) mask on h_{t-1}: a
multiply per step each way and one on the weight-gradient operand) and weight drop (the masked
recurrent kernel is computed before the layer, so nothing here changes). Peepholes, projection,
clipping, layer norm, zoneout, a gate held at 1 (input_gate, forget_gate or output_gate False)
and mixed dtypes (such as a float32 initial carry with bfloat16 compute) take the reference
path.

`reference_path()` forces the reference path while code is traced (a function traced before
keeps its cached trace, so jit a new one inside the context):

    with lstm.fast.reference_path():
      y_ref = jax.jit(lambda v, x: model.apply(v, x))(variables, x)
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import core as jax_core  # the trace in effect (`forward_mode`); no public API
from jax._src.interpreters import ad as jax_ad

from lstm import activations, loop_order, manual_axes, native, switches
from lstm.cell import DEFAULTS, OPTIONS, in_effect, restart

Array = jax.Array

_force_reference = switches.Switch()


def enabled() -> bool:
  """Whether `run_sequence` may dispatch to the fast path (True unless in `reference_path()`)."""
  return not _force_reference.on()


def reference_path(force: bool = True):
  """Within this context, layers traced run the reference `lax.scan` path (tests, benchmarks).

  It acts when a function is traced: jit reuses the trace it cached for a function object, so
  jit a new function inside the context (`jax.jit(lambda *a: f(*a))`), not one traced before.
  """
  return _force_reference.set(force)


def forward_mode() -> bool:
  """Whether code is being traced under forward-mode autodiff (`jax.jvp`, `jax.jacfwd`,
  `jax.hessian`, `jax.linearize`, forward over reverse; `jax.jit` inside them included), which a
  `custom_vjp` cannot carry: `run_sequence` then takes the reference path by itself. Not seen
  where a jaxpr traced without it is differentiated forwards later (`jax.jvp` of
  `jax.core.eval_jaxpr` of one): there JAX refuses, and `reference_path()` is the way out."""
  trace = getattr(getattr(jax_core, 'trace_ctx', None), 'trace', None)
  while trace is not None:
    if isinstance(trace, getattr(jax_ad, 'JVPTrace', ())):
      return True
    if (isinstance(trace, getattr(jax_ad, 'LinearizeTrace', ()))
        and not getattr(trace, 'is_vjp', True)):
      return True  # jax.linearize: its linear function runs forwards
    trace = getattr(trace, 'parent_trace', None)
  return False


def compute_dtype(cell, w, x: Array):
  """The dtype of the projected inputs z, as `LSTMCell.project_inputs` computes it."""
  x_dtype = cell.dtype if cell.dtype is not None else x.dtype
  parts = [jnp.zeros((), x_dtype), w.kernel]
  if w.bias is not None:
    parts.append(w.bias)
  return jnp.result_type(*parts)


# The cell options this path computes at any value. Every other option takes it only at its
# declared default, where it changes nothing: an option added to `LSTMCell` runs on the reference
# path until it is named here.
HANDLED = ('features', 'activation', 'recurrent_activation', 'use_bias', 'forget_bias',
           'candidate_activation', 'output_activation', 'coupled_gates', 'recurrent_dropout',
           'weight_drop', 'kernel_init', 'recurrent_kernel_init', 'bias_init', 'dtype',
           'param_dtype')


def supports(cell, w, x: Array, carry) -> bool:
  """Whether the fast path computes this layer: only options it handles (`HANDLED`) away from
  their defaults, one float dtype throughout."""
  if not enabled():
    return False
  options = {name: getattr(cell, name) for name in OPTIONS}
  if any(name not in HANDLED and in_effect(options, name) and options[name] != DEFAULTS[name]
         for name in OPTIONS):
    return False
  if w.peephole is not None or w.proj_kernel is not None:
    return False
  dtype = jnp.dtype(compute_dtype(cell, w, x))
  if not jnp.issubdtype(dtype, jnp.floating):
    return False
  h0, c0 = carry
  arrays = [w.kernel, w.recurrent_kernel, h0, c0] + ([w.bias] if w.bias is not None else [])
  if any(jnp.dtype(a.dtype) != dtype for a in arrays):
    return False
  hidden = w.recurrent_kernel.shape[0]
  return (x.ndim == 3 and x.shape[0] > 0 and h0.shape[:-1] == c0.shape[:-1] == x.shape[1:-1]
          and h0.shape[-1] == c0.shape[-1] == hidden and w.recurrent_kernel.shape[1] == 4 * hidden)


class _Spec(NamedTuple):
  """Static configuration of the time loop (hashable: a custom_vjp nondiff argument)."""
  candidate: Callable[[Array], Array]
  output: Callable[[Array], Array]
  gate: Callable[[Array], Array]
  closed_form: bool  # tanh and sigmoid: the loop saves activations, derivatives in closed form
  masked: bool
  remat: bool  # the layer keeps only its inputs; the backward recomputes projection and loop
  coupled: bool  # CIFG: the input gate is 1 - f


def run_layer(cell, w, x: Array, carry, mask: Optional[Array], remat: bool = False,
              resets: Optional[Array] = None, recurrent_mask: Optional[Array] = None):
  """One layer over time-major `x` (T, B, F), already reversed when the layer runs backwards.

  Returns outputs (T, B, H) and the final carry (h, c), as the reference scan of `run_sequence`.
  With `remat`, the forward keeps nothing but its inputs and the backward recomputes the loop.
  `resets` (T, B) marks the steps before which the carry restarts from zero (loop order);
  `recurrent_mask` (B, H) multiplies h_{t-1} where it enters the recurrent kernel.
  """
  dtype = compute_dtype(cell, w, x)
  bias = w.bias if w.bias is not None else jnp.zeros((w.kernel.shape[-1],), dtype)
  candidate, output = _fast_form(cell.candidate_fn), _fast_form(cell.output_fn)
  gate = _fast_form(activations.get(cell.recurrent_activation))
  closed_form = candidate is jnp.tanh and output is jnp.tanh and gate is _sigmoid
  spec = _Spec(candidate, output, gate, closed_form, mask is not None, remat, cell.coupled_gates)
  h0, c0 = carry
  if mask is None:
    mask = jnp.zeros((0,), jnp.bool_)  # placeholder: custom_vjp arguments are arrays
  drop = None if recurrent_mask is None else recurrent_mask.astype(dtype)
  # Under shard_map every input varies over the same axes, so that each cotangent can be given
  # its primal's type (the casts' own transposes sum the gradients of replicated weights).
  inputs = manual_axes.vary_together(x.astype(dtype), w.kernel, w.recurrent_kernel, bias, h0, c0,
                                     mask, resets, drop)
  y, h, c = _layer(spec, *inputs)
  return y, (h, c)


# ----------------------------------------------------------------------------------------------
# Elementwise math


def _sigmoid(x):
  """sigmoid(x) = tanh(x / 2) / 2 + 1/2: XLA:CPU's tanh is much cheaper than its logistic."""
  return 0.5 * jnp.tanh(0.5 * x) + 0.5


def _fast_form(fn):
  return _sigmoid if fn is jax.nn.sigmoid else fn


def _math_dtype(dtype):
  return jnp.promote_types(dtype, jnp.float32)


def _split4(a):
  return jnp.split(a, 4, axis=-1)


# The closed form of the gates (i, f, g, o): tanh(s * scale) * scale + offset, i.e. sigmoid as
# tanh(s / 2) / 2 + 1/2 for i, f, o and tanh for g.
_GATE_SCALE = (0.5, 0.5, 1.0, 0.5)
_GATE_OFFSET = (0.5, 0.5, 0.0, 0.5)


def _gate_affine(four_h: int, dtype):
  """(scale, offset) per column of the (B, 4H) pre-activations."""
  # numpy, so that they are constants of the program and not a broadcast inside the loop
  return (jnp.asarray(np.repeat(_GATE_SCALE, four_h // 4), dtype),
          jnp.asarray(np.repeat(_GATE_OFFSET, four_h // 4), dtype))


def _couple(spec: _Spec, gates):
  """The gates (i, f, g, o), with i = 1 - f for coupled gates (the i columns go unused)."""
  i, f, g, o = gates
  return (1 - f, f, g, o) if spec.coupled else gates


def _activate(spec: _Spec, s: Array):
  """Pre-activations s (B, 4H) -> gates (i, f, g, o) and what the training loop saves."""
  if spec.closed_form:
    scale, offset = _gate_affine(s.shape[-1], s.dtype)
    a = jnp.tanh(s * scale) * scale + offset
    return _couple(spec, _split4(a)), a
  si, sf, sg, so = _split4(s)
  return _couple(spec, (spec.gate(si), spec.gate(sf), spec.candidate(sg), spec.gate(so))), s


def _dropped(h: Array, drop: Optional[Array]) -> Array:
  """h where it enters the recurrent kernel: times the recurrent dropout mask, if any."""
  return h if drop is None else h * drop


def _step(spec: _Spec, w, b, z_t, h_prev, c_prev, m_t, drop):
  """One training step: (new h carry, new c carry, output, saved) in the carry/compute dtypes."""
  acc = _math_dtype(z_t.dtype)
  s = (z_t.astype(acc) + jnp.dot(_dropped(h_prev, drop), w, preferred_element_type=acc)
       + b.astype(acc))
  gates, saved = _activate(spec, s)
  m = m_t[:, None] if spec.masked else None
  h, c = _new_carry(spec, gates, h_prev, c_prev, m)
  y = h if m is None else jnp.where(m, h, jnp.zeros((), h.dtype))
  return h, c, y, saved.astype(z_t.dtype)


def _new_carry(spec: _Spec, gates, h_prev, c_prev, m):
  """(h, c) from the gates, in the carry dtypes; where the mask m is False, the previous carry."""
  i, f, g, o = gates
  c = f * c_prev.astype(i.dtype) + i * g
  h = (o * spec.output(c)).astype(h_prev.dtype)
  c = c.astype(c_prev.dtype)
  if m is not None:
    c = jnp.where(m, c, c_prev)
    h = jnp.where(m, h, h_prev)
  return h, c


def _step_feature_major(spec: _Spec, kernel_t, w_t, b, x_t, h_prev, c_prev, m_t, drop_t):
  """One inference step on (F, B) inputs and (H, B) carries: the new carries (h, c).

  The pre-activations are viewed as (4, H, B), so each gate is one contiguous block and the
  closed form is one tanh with a per-gate scale and offset.
  """
  acc = _math_dtype(x_t.dtype)
  hidden, batch = h_prev.shape
  s = (jnp.dot(kernel_t, x_t, preferred_element_type=acc)
       + jnp.dot(w_t, _dropped(h_prev, drop_t), preferred_element_type=acc)
       + b.astype(acc)[:, None])
  s = s.reshape(4, hidden, batch)
  if spec.closed_form:
    scale = jnp.array(_GATE_SCALE, acc)[:, None, None]
    offset = jnp.array(_GATE_OFFSET, acc)[:, None, None]
    gates = tuple(jnp.tanh(s * scale) * scale + offset)
  else:
    gates = spec.gate(s[0]), spec.gate(s[1]), spec.candidate(s[2]), spec.gate(s[3])
  return _new_carry(spec, _couple(spec, gates), h_prev, c_prev,
                    m_t[None, :] if spec.masked else None)


def _matmul_tn(a: Array, b: Array, dtype) -> Array:
  """a^T b over all leading axes of a (..., M) and b (..., N), i.e. K = their product: (M, N).

  In float32 the transpose of the small operand is kept apart by an optimization barrier: left to
  itself, XLA:CPU folds it into the dot or transposes the larger operand, both slower here. In
  bfloat16 that dot runs in float32 (its operands converted), and so does a dot of the operands
  flattened to (K, M) and (K, N); one dot contracting the leading axes as they are runs in
  bfloat16, about twice as fast (bench/bench_breakdown.py --dtype bfloat16).
  """
  if a.dtype == jnp.bfloat16 and b.dtype == jnp.bfloat16:
    leading = tuple(range(a.ndim - 1))
    out = jax.lax.dot_general(a, b, ((leading, leading), ((), ())),
                              preferred_element_type=jnp.float32)
  else:
    a_t = jax.lax.optimization_barrier(a.reshape(-1, a.shape[-1]).T)
    out = jnp.dot(a_t, b.reshape(-1, b.shape[-1]), preferred_element_type=jnp.float32)
  return out.astype(dtype)


def _index(a: Array, t) -> Array:
  return jax.lax.dynamic_index_in_dim(a, t, 0, keepdims=False)


def _put(a: Array, value: Array, t) -> Array:
  return jax.lax.dynamic_update_index_in_dim(a, value.astype(a.dtype), t, 0)


def _reset_at(resets: Optional[Array], t) -> Optional[Array]:
  return None if resets is None else _index(resets, t)


# ----------------------------------------------------------------------------------------------
# The layer: projection and time loop under one custom VJP


def feature_major_pays(batch: int, hidden: int, features: int, dtype) -> bool:
  """Whether inference runs `_infer_feature_major`: `lstm.loop_order`'s choice for this shape on
  this machine (measured once per CPU and shape on CPU; batch-major on accelerators).

  Measured against the batch-major loop on the first 2-core AMD EPYC (one layer's inference,
  median time ratio): 0.86x at batch 32 x hidden 256 (T=128, input 128), 0.73x at 256 x 256, 0.60x
  at 32 x 1024; 1.05x at 16 x 256, 0.99x at 16 x 512; slower at 32 x 128 (1.13x), 8 x 256 (1.09x),
  4 x 256 (1.68x), 64 x 64 (1.24x) and 1 x 512 (1.22x); on a newer AMD EPYC about even at 32 x 256.
  """
  return loop_order.feature_major(batch, hidden, features, dtype, _measure_loop_orders)


def _measure_loop_orders(batch: int, hidden: int, features: int, dtype, steps: int
                     ) -> tuple[float, float]:
  """Best seconds of one canonical layer's inference of this shape: (batch-major, feature-major)."""
  spec = _Spec(jnp.tanh, jnp.tanh, _sigmoid, True, False, False, False)
  keys = jax.random.split(jax.random.key(0), 3)
  inputs = (jax.random.normal(keys[0], (steps, batch, features), dtype),
            (jax.random.normal(keys[1], (features, 4 * hidden)) / np.sqrt(features)).astype(dtype),
            (jax.random.normal(keys[2], (hidden, 4 * hidden)) / np.sqrt(hidden)).astype(dtype),
            jnp.zeros((4 * hidden,), dtype), jnp.zeros((batch, hidden), dtype),
            jnp.zeros((batch, hidden), dtype), jnp.zeros((0,), jnp.bool_), None, None)
  runs = {}
  for name, impl in (('batch_major', _infer_batch_major), ('feature_major', _infer_feature_major)):
    compiled = jax.jit(functools.partial(impl, spec)).lower(*inputs).compile()
    runs[name] = functools.partial(compiled, *inputs)
  best = loop_order.time_best(runs)
  return best['batch_major'], best['feature_major']


def _native(spec: _Spec, dtype, w, resets, drop) -> bool:
  """Whether the loop runs as `lstm.native`'s CPU kernel."""
  return native.usable(dtype, w.shape[0], spec.closed_form,
                       plain=not spec.coupled and resets is None and drop is None)


def _masked(spec: _Spec, hs, mask):
  """The outputs: the h carries, zero past each sequence's length."""
  return jnp.where(mask[..., None], hs, jnp.zeros((), hs.dtype)) if spec.masked else hs


def _layer_impl(spec: _Spec, x, kernel, w, b, h0, c0, mask, resets, drop):
  """Inference (the primal, when nothing is differentiated)."""
  if _native(spec, x.dtype, w, resets, drop):
    _, hs, cs = native.forward(x, kernel, w, b, h0, c0, mask if spec.masked else None,
                               keep_gates=False)
    return _masked(spec, hs, mask), hs[-1], cs[-1]
  # The loop order is chosen per shape; a symbolic shape (jax.export) runs batch-major.
  if (all(isinstance(d, int) for d in x.shape)
      and feature_major_pays(x.shape[1], w.shape[0], x.shape[2], x.dtype)):
    return _infer_feature_major(spec, x, kernel, w, b, h0, c0, mask, resets, drop)
  return _infer_batch_major(spec, x, kernel, w, b, h0, c0, mask, resets, drop)


def _infer_batch_major(spec: _Spec, x, kernel, w, b, h0, c0, mask, resets, drop):
  """The inputs of all steps projected by one matmul, then a scan that emits the outputs."""

  def step(carry, xs):
    z_t, m_t, r_t = xs
    carry = restart(r_t, carry)
    h, c, y, _ = _step(spec, w, b, z_t, *carry, m_t, drop)
    return (h, c), y

  z = jnp.dot(x, kernel)
  (h, c), y = jax.lax.scan(step, manual_axes.vary_together(h0, c0, z)[:2],
                           (z, mask if spec.masked else None, resets))
  return y, h, c


def _infer_feature_major(spec: _Spec, x, kernel, w, b, h0, c0, mask, resets, drop):
  """One feature-major loop and no z.

  Each step computes kernel^T x_t + w^T h, (4H, F) by (F, B) and (4H, H) by (H, B), on carries
  kept as (H, B): for the sizes `feature_major_pays` admits, XLA:CPU runs these products markedly
  faster than x_t kernel and h w, and projecting inside the loop spares writing and reading z.
  The input and the outputs are transposed once, before and after the loop (in a stack, XLA
  cancels the transposes between consecutive layers).
  """
  x_fm = jnp.swapaxes(x, 1, 2)  # (T, F, B)
  kernel_t, w_t = kernel.T, w.T
  drop_t = None if drop is None else drop.T

  def step(carry, xs):
    x_t, m_t, r_t = xs
    carry = restart(r_t, carry, feature_axis=0)
    h, c = _step_feature_major(spec, kernel_t, w_t, b, x_t, *carry, m_t, drop_t)
    return (h, c), h

  (h, c), y = jax.lax.scan(step, manual_axes.vary_together(h0.T, c0.T, x_fm)[:2],
                           (x_fm, mask if spec.masked else None, resets))
  if spec.masked:
    y = jnp.where(mask[:, None, :], y, jnp.zeros((), y.dtype))
  return jnp.swapaxes(y, 1, 2), h.T, c.T


_layer = jax.custom_vjp(_layer_impl, nondiff_argnums=(0,))


def _layer_fwd(spec: _Spec, x, kernel, w, b, h0, c0, mask, resets, drop):
  """Training forward. With remat it keeps only the layer's inputs: x is (T, B, F), a fraction
  of the gates' (T, B, 4H)."""
  inputs = (x, kernel, w, b, h0, c0, mask, resets, drop)
  if spec.remat:
    return _layer_impl(spec, *inputs), inputs
  outputs, saved = _recurrence_fwd(spec, x, kernel, w, b, h0, c0, mask, resets, drop)
  return outputs, (x, kernel, saved)


def _layer_bwd(spec: _Spec, residuals, cotangents):
  """Backward loop, then the weight gradients and dx as single large matmuls.

  With remat the projection and the forward loop are recomputed first, once this layer's output
  cotangents exist. Left free, XLA merges the recomputed projection with the forward's (keeping
  every layer's z alive from the forward to the backward) and schedules recomputations early:
  remat would save nothing. `_after` ties the recomputation to the cotangents.
  """
  if spec.remat:
    x, kernel, w, b, h0, c0, mask, resets, drop = residuals
    x = _after(x, cotangents[0])
    _, saved = _recurrence_fwd(spec, x, kernel, w, b, h0, c0, mask, resets, drop)
  else:
    x, kernel, saved = residuals
  dw, db, dz, dh0, dc0, _ = _recurrence_bwd(spec, saved, cotangents)
  dx = jnp.dot(dz, kernel.T, preferred_element_type=jnp.float32).astype(x.dtype)
  axes = manual_axes.varying(x)  # every input's (see run_layer)
  grads = [manual_axes.vary(g, axes) for g in (dx, _matmul_tn(x, dz, kernel.dtype), dw, db, dh0,
                                               dc0)]
  return (*grads, None, None, None)


_layer.defvjp(_layer_fwd, _layer_bwd)


# ----------------------------------------------------------------------------------------------
# Time loop for training: forward saving what the backward needs, backward loop


def _recurrence_fwd(spec: _Spec, x, kernel, w, b, h0, c0, mask, resets, drop):
  """Forward for training: projects x (one matmul, or inside the CPU kernel's loop) and saves
  the gates (over the projected inputs) and the carries after every step."""
  if _native(spec, x.dtype, w, resets, drop):
    saved, hs, cs = native.forward(x, kernel, w, b, h0, c0, mask if spec.masked else None)
  else:
    saved, hs, cs = _loop_fwd(spec, x, kernel, w, b, h0, c0, mask, resets, drop)
  return ((_masked(spec, hs, mask), hs[-1], cs[-1]),
          (w, saved, hs, cs, h0, c0, mask, resets, drop))


def _loop_fwd(spec: _Spec, x, kernel, w, b, h0, c0, mask, resets, drop):
  """The XLA forward loop of `_recurrence_fwd`: (saved gates, hs, cs), each (T, B, .)."""
  z = jnp.dot(x, kernel)
  steps = z.shape[0]
  hs = jnp.zeros((steps,) + h0.shape, h0.dtype)
  cs = jnp.zeros((steps,) + c0.shape, c0.dtype)

  def body(t, carry):
    h_prev, c_prev, buf, z_t, hs, cs = carry
    h_prev, c_prev = restart(_reset_at(resets, t), (h_prev, c_prev))
    h, c, _, saved = _step(spec, w, b, z_t, h_prev, c_prev,
                           _index(mask, t) if spec.masked else None, drop)
    buf = _put(buf, saved, t)
    z_next = _index(buf, jnp.minimum(t + 1, steps - 1))  # read after the write: in place
    return h, c, buf, z_next, _put(hs, h, t), _put(cs, c, t)

  init = manual_axes.vary_together(h0, c0, z, z[0], hs, cs)  # loop carries of one type
  _, _, saved, _, hs, cs = jax.lax.fori_loop(0, steps, body, init)
  return saved, hs, cs


def _recurrence_bwd(spec: _Spec, residuals, cotangents):
  """Reverse loop writing dz[t] over the saved gates of step t; then the weight gradients."""
  dy, dh_last, dc_last = cotangents
  w, saved, hs, cs, h0, c0, mask, resets, drop = residuals
  if _native(spec, saved.dtype, w, resets, drop):
    dz, dh0, dc0 = native.backward(saved, cs, c0, w, dy, dh_last, dc_last,
                                   mask if spec.masked else None)
  else:
    dz, dh0, dc0 = _loop_bwd(spec, w, saved, cs, c0, mask, resets, drop, dy, dh_last, dc_last)
  return (*_weight_grads(w, hs, h0, dz, resets, drop), dz, dh0, dc0, None)


def _loop_bwd(spec: _Spec, w, saved, cs, c0, mask, resets, drop, dy, dh_last, dc_last):
  """The XLA reverse loop of `_recurrence_bwd`: (dz, dh0, dc0)."""
  steps = saved.shape[0]
  acc = _math_dtype(saved.dtype)
  w_t = w.T
  zero = jnp.zeros((), acc)

  def body(k, carry):
    dh_next, dc_next, buf, a_t, c = carry  # a_t = buf[t]; c = cs[t], the c carry after step t
    t = steps - 1 - k
    c_prev = jnp.where(t > 0, _index(cs, jnp.maximum(t - 1, 0)), c0)
    reset = _reset_at(resets, t)
    c_prev_acc, c_acc = restart(reset, (c_prev,))[0].astype(acc), c.astype(acc)
    dh = _index(dy, t).astype(acc) + dh_next
    dc = dc_next
    if spec.masked:
      m = _index(mask, t)[:, None]
      dh = jnp.where(m, dh, zero)
      dc = jnp.where(m, dc, zero)
    a_t = a_t.astype(acc)
    # With coupled gates the i columns get no gradient and f gets dc * (c_prev - g).
    if spec.closed_form:
      i, f, g, o = _couple(spec, _split4(a_t))
      tc = jnp.tanh(c_acc)
      dc = dc + dh * o * (1 - tc * tc)
      dz_i, dz_f = dc * g * i * (1 - i), dc * c_prev_acc * f * (1 - f)
      if spec.coupled:
        dz_i, dz_f = jnp.zeros_like(dz_i), dc * (c_prev_acc - g) * f * (1 - f)
      dz = jnp.concatenate([dz_i, dz_f, dc * i * (1 - g * g), dh * tc * o * (1 - o)], -1)
    else:
      si, sf, sg, so = _split4(a_t)
      i, pull_i = jax.vjp(spec.gate, si)
      f, pull_f = jax.vjp(spec.gate, sf)
      g, pull_g = jax.vjp(spec.candidate, sg)
      o, pull_o = jax.vjp(spec.gate, so)
      i = _couple(spec, (i, f, g, o))[0]
      tc, pull_c = jax.vjp(spec.output, f * c_prev_acc + i * g)
      dc = dc + pull_c(dh * o)[0]
      dz_i, dz_f = pull_i(dc * g)[0], pull_f(dc * c_prev_acc)[0]
      if spec.coupled:
        dz_i, dz_f = jnp.zeros_like(dz_i), pull_f(dc * (c_prev_acc - g))[0]
      dz = jnp.concatenate([dz_i, dz_f, pull_g(dc * i)[0], pull_o(dh * tc)[0]], -1)
    dz = dz.astype(buf.dtype)
    dh_prev = _dropped(jnp.dot(dz, w_t, preferred_element_type=acc), drop)
    dc_prev = dc * f
    if spec.masked:  # past the length the carry passes through unchanged
      dh_prev = dh_prev + jnp.where(m, zero, dh_next)
      dc_prev = dc_prev + jnp.where(m, zero, dc_next)
    dh_prev, dc_prev = restart(reset, (dh_prev, dc_prev))
    buf = _put(buf, dz, t)
    a_prev = _index(buf, jnp.maximum(t - 1, 0))  # read after the write: in place
    return dh_prev, dc_prev, buf, a_prev, c_prev

  init = manual_axes.vary_together(dh_last.astype(acc), dc_last.astype(acc), saved,
                                   saved[steps - 1], cs[steps - 1])
  dh0, dc0, dz, _, _ = jax.lax.fori_loop(0, steps, body, init)
  return dz, dh0.astype(c0.dtype), dc0.astype(c0.dtype)


def _weight_grads(w, hs, h0, dz, resets, drop):
  """(dw, db) from the pre-activation gradients dz (T, B, 4H): h_prev^T dz and the sum of dz."""
  h_prevs = jnp.concatenate([h0[None], hs[:-1]], axis=0)
  h_prevs = restart(resets, (h_prevs,))[0]
  dw = _matmul_tn(_dropped(h_prevs, drop), dz, w.dtype)
  db = jnp.sum(dz, axis=(0, 1), dtype=jnp.float32).astype(w.dtype)
  return dw, db



# ----------------------------------------------------------------------------------------------
# What the CPU kernel computes, as XLA loops: `lstm.native` lowers its primitives to these for
# every platform but the CPU, for export, and differentiates them through these.

_KERNEL_SPEC = _Spec(jnp.tanh, jnp.tanh, _sigmoid, True, False, False, False)


def kernel_forward_xla(x, kernel, w, b, h0, c0, mask, keep_gates: bool = True):
  """`lstm.native.forward`'s function: x (T, B, F) float32 or bfloat16 (every other array in
  its dtype), mask (T, B) as 0/1 or (0,) -> (gates (T, B, 4H) or (0,) unless `keep_gates`, hs,
  cs), the carries after every step."""
  spec = _KERNEL_SPEC._replace(masked=mask.ndim == 2)
  m = mask > 0 if spec.masked else jnp.zeros((0,), jnp.bool_)
  if keep_gates:
    return _loop_fwd(spec, x, kernel, w, b, h0, c0, m, None, None)

  def step(carry, xs):
    z_t, m_t = xs
    h, c, _, _ = _step(spec, w, b, z_t, *carry, m_t, None)
    return (h, c), (h, c)

  z = jnp.dot(x, kernel)
  _, (hs, cs) = jax.lax.scan(step, manual_axes.vary_together(h0, c0, z)[:2],
                             (z, m if spec.masked else None))
  return jnp.zeros((0,), x.dtype), hs, cs


def kernel_backward_xla(gates, cs, c0, w, dy, dh_last, dc_last, mask):
  """`lstm.native.backward`'s function: (dz (T, B, 4H), dh0, dc0) from the kept gates."""
  spec = _KERNEL_SPEC._replace(masked=mask.ndim == 2)
  m = mask > 0 if spec.masked else jnp.zeros((0,), jnp.bool_)
  return _loop_bwd(spec, w, gates, cs, c0, m, None, None, dy, dh_last, dc_last)


def _after(x: Array, dependency: Array) -> Array:
  """x, made to depend on `dependency` (adds 0 * one of its elements).

  XLA:CPU removes optimization barriers before its last CSE, so a barrier neither delays the
  recomputation nor keeps it from being merged with the forward pass's identical ops; a data
  dependency does both. 0 * d is not simplified away for floats (it is NaN for inf or NaN d, and
  then so is the gradient).
  """
  d = dependency.reshape(-1)[:1].astype(x.dtype)
  return x + 0 * d.reshape((1,) * x.ndim)


native.register_xla_loops(kernel_forward_xla, kernel_backward_xla)
