"""The fast path (lstm/fast.py) against the reference `lax.scan` path of `run_sequence`.

Every configuration is run twice, the second time inside `fast.reference_path()`, and outputs,
final carries and gradients with respect to parameters, inputs and initial carries must agree.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm import LSTMCell, LSTMLayer, StackedLSTM, fast, native, run_sequence

B, T, F, H = 3, 7, 4, 5
LENGTHS = jnp.array([7, 4, 0])
# Small programs: LLVM's optimizations cost more compile time than they save here.
_jit = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})


@pytest.fixture(params=['batch_major', pytest.param('feature_major', marks=pytest.mark.slow)])
def loop_order(request, monkeypatch):
  """Runs the test once per inference loop order (`fast.feature_major_pays` decides otherwise);
  the feature-major runs are in the slow set."""
  monkeypatch.setattr(fast, 'feature_major_pays',
                      lambda *shape: request.param == 'feature_major')
  return request.param


def _on_reference_path(fn, *args):
  """`fn(*args)` jitted and traced inside `fast.reference_path()`.

  The wrapper is a new function: jit caches traces by function, so jitting `fn` itself a second
  time would reuse its fast-path trace and compare the fast path with itself.
  """
  with fast.reference_path():
    return _jit(lambda *a: fn(*a))(*args)


def _assert_trees_close(got, want, tol=1e-5):
  """Max abs difference within tol times the scale of the reference (at least 1)."""
  got_leaves, got_def = jax.tree.flatten(got)
  want_leaves, want_def = jax.tree.flatten(want)
  assert got_def == want_def
  for g, w in zip(got_leaves, want_leaves):
    g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
    assert g.shape == w.shape
    assert np.all(np.isfinite(g))
    scale = max(1.0, float(np.max(np.abs(w)))) if w.size else 1.0
    np.testing.assert_allclose(g, w, rtol=0, atol=tol * scale)


def _initial_carry(model, key, batch=B):
  """A random initial carry shaped like `model`'s final carry."""
  shapes = jax.eval_shape(model.init_with_output, jax.random.key(0), jnp.zeros((batch, T, F)))
  carry_shapes = shapes[0][1]
  leaves, treedef = jax.tree.flatten(carry_shapes)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(
      treedef, [jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves)])


def _compare(model, seq_lengths=None, with_carry=True, tol=1e-5, x=None, **apply_kwargs):
  """Outputs, carries and gradients of `model` on both paths; returns the fast-path outputs.

  `apply_kwargs` go to every `model.apply` (segment_starts, deterministic, rngs)."""
  if x is None:
    x = jax.random.normal(jax.random.key(0), (B, T, F))
  variables = _jit(model.init)(jax.random.key(1), x)
  carry = _initial_carry(model, jax.random.key(2), x.shape[0]) if with_carry else None
  weights = jax.random.normal(jax.random.key(3), jax.eval_shape(
      lambda: model.apply(variables, x, seq_lengths, **apply_kwargs)[0]).shape)

  def loss(variables, x, carry):
    y, final = model.apply(variables, x, seq_lengths, carry, **apply_kwargs)
    carry_term = sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves(final))
    return jnp.sum(y * weights) + carry_term, (y, final)

  def run(variables, x, carry):
    forward = model.apply(variables, x, seq_lengths, carry, **apply_kwargs)  # primal path
    grads, outputs = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(variables, x, carry)
    return forward, outputs, grads

  got = _jit(run)(variables, x, carry)
  want = _on_reference_path(run, variables, x, carry)
  _assert_trees_close(got, want, tol)
  return got


# ----------------------------------------------------------------------------------------------
# Single layers


@pytest.mark.parametrize('reverse, padded', [(False, False), (True, True), (False, True)])
def test_layer_matches_reference(fast_calls, loop_order, reverse, padded):
  _compare(LSTMLayer(LSTMCell(H), reverse=reverse), LENGTHS if padded else None)
  assert fast_calls


@pytest.mark.parametrize('activation, recurrent_activation, padded', [
    ('relu', 'hard_sigmoid', True),
    ('tanh', 'hard_sigmoid', True),
    ('gelu', 'sigmoid', True),
    (jax.nn.soft_sign, lambda z: jax.nn.sigmoid(2.0 * z), False),
])
def test_other_activations_match_reference(fast_calls, loop_order, activation, recurrent_activation,
                                           padded):
  cell = LSTMCell(H, activation=activation, recurrent_activation=recurrent_activation)
  _compare(LSTMLayer(cell, reverse=padded), LENGTHS if padded else None)
  assert fast_calls


def test_no_bias_and_zero_initial_carry(fast_calls, loop_order):
  _compare(LSTMLayer(LSTMCell(H, use_bias=False)), LENGTHS, with_carry=False)
  assert fast_calls


def test_one_step_and_batch_of_one(fast_calls, loop_order):
  _compare(LSTMLayer(LSTMCell(H)), jnp.array([1]), x=jax.random.normal(jax.random.key(4), (1, 1, F)))
  assert fast_calls


def test_arbitrary_mask_through_run_sequence(fast_calls, loop_order):
  """run_sequence takes any (T, B) mask, not only prefixes: frozen carry, zero outputs."""

  class Masked(nn.Module):
    @nn.compact
    def __call__(self, x, mask, carry):
      return run_sequence(LSTMCell(H, name='cell'), jnp.swapaxes(x, 0, 1), mask, None, carry)

  x = jax.random.normal(jax.random.key(0), (B, T, F))
  mask = jax.random.bernoulli(jax.random.key(5), 0.6, (T, B))
  model = Masked()
  variables = _jit(model.init)(jax.random.key(1), x, mask, None)
  carry = (jax.random.normal(jax.random.key(6), (B, H)), jax.random.normal(jax.random.key(7), (B, H)))

  def loss(variables, x, carry):
    y, final = model.apply(variables, x, mask, carry)
    return jnp.sum(y ** 3) + jnp.sum(final[0] * final[1]), (y, final)

  def run(variables, x, carry):
    return (model.apply(variables, x, mask, carry),
            jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(variables, x, carry))

  got = _jit(run)(variables, x, carry)
  want = _on_reference_path(run, variables, x, carry)
  _assert_trees_close(got, want)
  assert fast_calls


# ----------------------------------------------------------------------------------------------
# Stacks


@pytest.mark.slow  # a stack on both paths for every option set
@pytest.mark.parametrize('kwargs', [
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=3, block='residual_op_on_skip', between='relu'),
    dict(num_layers=3, scan_layers=True),
    dict(num_layers=2, remat=True, reverse=True),
    dict(cells=({'features': 6}, {'features': H, 'activation': 'relu'})),
], ids=['bidirectional', 'residual', 'scan_layers', 'remat-reverse', 'cells'])
def test_stack_matches_reference(fast_calls, loop_order, kwargs):
  kwargs = dict(kwargs)
  kwargs.setdefault('hidden_size', H)
  _compare(StackedLSTM(**kwargs), LENGTHS)
  assert fast_calls


def test_unpadded_bidirectional_remat_stack_matches_reference(fast_calls, loop_order):
  _compare(StackedLSTM(num_layers=2, hidden_size=H, bidirectional=True, reverse=True, remat=True))
  assert fast_calls


def test_padded_outputs_are_zero_and_carries_frozen(loop_order):
  model = StackedLSTM(num_layers=2, hidden_size=H, bidirectional=True)
  x = jax.random.normal(jax.random.key(0), (B, T, F))
  variables = _jit(model.init)(jax.random.key(1), x)
  y, carries = _jit(model.apply)(variables, x, LENGTHS)
  for b, n in enumerate(np.asarray(LENGTHS)):
    np.testing.assert_array_equal(y[b, n:], 0.0)
  # A zero-length sequence keeps its (zero) initial carry in both directions.
  for leaf in jax.tree.leaves(carries):
    np.testing.assert_array_equal(leaf[2], 0.0)


def test_jit_and_second_order_gradients():
  """The custom VJPs compose with jit and with reverse-over-reverse differentiation."""
  model = LSTMLayer(LSTMCell(H))
  x = jax.random.normal(jax.random.key(0), (B, T, F))
  variables = _jit(model.init)(jax.random.key(1), x)

  def loss(x):
    return jnp.sum(model.apply(variables, x, LENGTHS)[0] ** 2)

  def grad_norm(x):
    return jnp.sum(jax.grad(loss)(x) ** 2)

  got = _jit(jax.grad(grad_norm))(x)
  want = _on_reference_path(jax.grad(grad_norm), x)
  _assert_trees_close(got, want, tol=1e-4)


# ----------------------------------------------------------------------------------------------
# Dispatch


@pytest.mark.parametrize('cell_kwargs', [
    dict(peephole=True), dict(proj_size=3), dict(cell_clip=1.0), dict(layer_norm=True),
])
def test_other_cells_take_the_reference_path(fast_calls, cell_kwargs):
  layer = LSTMLayer(LSTMCell(H, **cell_kwargs))
  x = jnp.ones((B, T, F))
  jax.eval_shape(layer.init_with_output, jax.random.key(0), x)
  assert not fast_calls


def test_mixed_dtype_carry_takes_the_reference_path(fast_calls):
  layer = LSTMLayer(LSTMCell(H, dtype=jnp.bfloat16))
  x = jnp.ones((B, T, F))
  variables = jax.eval_shape(layer.init, jax.random.key(0), x)
  fast_calls.clear()
  carry = (jnp.zeros((B, H), jnp.float32), jnp.zeros((B, H), jnp.float32))
  jax.eval_shape(layer.apply, variables, x, None, carry)
  assert not fast_calls
  jax.eval_shape(layer.apply, variables, x)
  assert fast_calls


@pytest.mark.skipif(jax.default_backend() != 'cpu',
                    reason='the feature-major loop is a CPU rule; accelerators run batch-major')
def test_inference_loop_order_follows_the_size(monkeypatch):
  """Under the 'rule' policy, at batch 32 x hidden 256 on CPU inference runs feature-major, equal
  to the reference path; smaller layers and training run batch-major (XLA loops: the CPU kernel,
  which takes such layers first, is off)."""
  monkeypatch.setenv('LSTM_LOOP_ORDER', 'rule')
  monkeypatch.setenv(native.ENV, '0')
  used = []
  for name in ('_infer_feature_major', '_infer_batch_major'):
    original = getattr(fast, name)
    monkeypatch.setattr(fast, name, functools.partial(
        lambda original, name, *args: used.append(name) or original(*args), original, name))
  model = StackedLSTM(num_layers=2, hidden_size=256)
  x = jax.random.normal(jax.random.key(0), (32, 6, 16))
  lengths = jnp.arange(32) % 7
  variables = _jit(model.init)(jax.random.key(1), x)
  used.clear()
  got = _jit(model.apply)(variables, x, lengths)
  assert used == ['_infer_feature_major'] * 2
  want = _on_reference_path(model.apply, variables, x, lengths)
  _assert_trees_close(got, want)
  small = StackedLSTM(num_layers=1, hidden_size=128)
  used.clear()
  jax.eval_shape(small.init_with_output, jax.random.key(0), x)
  assert used == ['_infer_batch_major']
  used.clear()
  jax.eval_shape(jax.grad(lambda v: jnp.sum(model.apply(v, x)[0])), variables)
  assert used == []


def test_reference_path_context_nests_and_restores():
  assert fast.enabled()
  with fast.reference_path():
    assert not fast.enabled()
    with fast.reference_path(False):
      assert fast.enabled()
    assert not fast.enabled()
  assert fast.enabled()


# ----------------------------------------------------------------------------------------------
# bfloat16 compute with float32 parameters


@pytest.mark.slow  # a training step in two dtypes
def test_bfloat16_runs_end_to_end_close_to_float32(fast_calls, loop_order):
  x = jax.random.normal(jax.random.key(0), (B, T, F))
  model32 = StackedLSTM(num_layers=1, hidden_size=8, bidirectional=True)
  model16 = StackedLSTM(num_layers=1, hidden_size=8, bidirectional=True, dtype=jnp.bfloat16)
  variables = _jit(model32.init)(jax.random.key(1), x)

  def loss(model):
    def f(variables, x):
      y, carries = model.apply(variables, x, LENGTHS)
      return jnp.sum(y.astype(jnp.float32) ** 2), (y, carries)
    return f

  grad = lambda model: _jit(jax.grad(loss(model), argnums=(0, 1), has_aux=True))
  (g16, x16), (y16, c16) = grad(model16)(variables, x)
  assert fast_calls
  assert y16.dtype == jnp.bfloat16
  assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(c16))
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(g16))  # float32 parameters
  (g32, x32), (y32, c32) = grad(model32)(variables, x)
  _assert_trees_close((y16, c16), (y32, c32), tol=3e-2)
  _assert_trees_close((g16, x16), (g32, x32), tol=5e-2)
  with fast.reference_path():
    (r16, rx16), (ry16, _) = grad(model16)(variables, x)
  _assert_trees_close((g16, x16, y16), (r16, rx16, ry16), tol=5e-2)
  infer = _jit(lambda variables, x: model16.apply(variables, x, LENGTHS))
  got = infer(variables, x)
  assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(got))
  want = _on_reference_path(lambda variables, x: model16.apply(variables, x, LENGTHS),
                            variables, x)
  _assert_trees_close(got, want, tol=3e-2)


def test_forward_mode_takes_the_reference_path_by_itself(fast_calls):
  """jvp of a layer runs the reference scan (a custom_vjp has no forward mode): no fast-path
  layer is traced, and the tangents equal those of the reference path."""
  layer = LSTMLayer(LSTMCell(H))
  x = jax.random.normal(jax.random.key(0), (B, T, F))
  variables = _jit(layer.init)(jax.random.key(1), x)
  f = lambda x: layer.apply(variables, x, LENGTHS)[0]
  fast_calls.clear()
  got = jax.jvp(f, (x,), (x,))
  assert not fast_calls
  with fast.reference_path():
    want = jax.jvp(f, (x,), (x,))
  _assert_trees_close(got, want)


def test_forward_mode_of_a_jaxpr_traced_before_needs_the_reference_path():
  """Where the forward-mode trace cannot be seen (the jvp of a jaxpr traced without it), JAX
  refuses the custom_vjp; the jaxpr traced inside `reference_path()` has none."""
  layer = LSTMLayer(LSTMCell(H))
  x = jax.random.normal(jax.random.key(0), (B, T, F))
  variables = _jit(layer.init)(jax.random.key(1), x)
  f = lambda x: layer.apply(variables, x, LENGTHS)[0]
  run = lambda closed: (lambda x: jax.core.eval_jaxpr(closed.jaxpr, closed.consts, x)[0])
  with pytest.raises(TypeError, match='forward-mode autodiff'):
    jax.jvp(run(jax.make_jaxpr(f)(x)), (x,), (x,))
  with fast.reference_path():
    closed = jax.make_jaxpr(lambda x: f(x))(x)  # a new function: traces are cached per function
  _, tangent = jax.jvp(run(closed), (x,), (x,))
  assert np.all(np.isfinite(tangent))


# ----------------------------------------------------------------------------------------------
# Cell options and segment resets (same RNG key on both paths: the same masks)

STARTS = jnp.array([[0, 0, 1, 0, 0, 1, 1], [1, 0, 0, 1, 0, 1, 0], [0, 1, 0, 0, 0, 0, 0]], bool)
TRAINING = dict(deterministic=False, rngs={'dropout': jax.random.key(4)})
FAST_OPTIONS = {
    'recurrent_dropout': dict(recurrent_dropout=0.4),
    'weight_drop': dict(weight_drop=0.5),
    'cifg': dict(coupled_gates=True),
    'niaf-relu-output': dict(candidate_activation='linear', output_activation='relu'),
    'cifg-dropout-relu': dict(coupled_gates=True, recurrent_dropout=0.3, activation='relu',
                              recurrent_activation='hard_sigmoid'),
}


@pytest.mark.parametrize('reverse, padded, resets', [(False, False, False), (True, True, True),
                                                     (False, True, True)],
                         ids=['forward', 'reverse-padded-resets', 'padded-resets'])
@pytest.mark.parametrize('case', list(FAST_OPTIONS))
def test_cell_options_match_reference(fast_calls, loop_order, case, reverse, padded, resets):
  layer = LSTMLayer(LSTMCell(H, **FAST_OPTIONS[case]), reverse=reverse)
  _compare(layer, LENGTHS if padded else None, segment_starts=STARTS if resets else None,
           **TRAINING)
  assert fast_calls


@pytest.mark.slow  # a stack on both paths for every option set
@pytest.mark.parametrize('kwargs', [
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=2, bidirectional=True, reverse=True, remat=True, recurrent_dropout=0.3),
    dict(num_layers=3, scan_layers=True, coupled_gates=True, weight_drop=0.3),
], ids=['bidirectional', 'bidirectional-reverse-remat-dropout', 'scan_layers-cifg-weight_drop'])
def test_stack_resets_and_options_match_reference(fast_calls, loop_order, kwargs):
  _compare(StackedLSTM(hidden_size=H, **kwargs), LENGTHS, segment_starts=STARTS, **TRAINING)
  assert fast_calls


@pytest.mark.parametrize('cell_kwargs, fast_path', [
    (dict(recurrent_dropout=0.3), True), (dict(weight_drop=0.3), True),
    (dict(coupled_gates=True), True), (dict(candidate_activation='linear'), True),
    (dict(output_activation='linear'), True), (dict(zoneout_cell=0.1), False),
    (dict(zoneout_hidden=0.1), False), (dict(input_gate=False), False),
    (dict(forget_gate=False), False), (dict(output_gate=False), False),
], ids=lambda v: '-'.join(v) if isinstance(v, dict) else str(v))
def test_cell_options_dispatch(fast_calls, cell_kwargs, fast_path):
  """Resets with the training-time options drawn: the fast path where it supports the cell."""
  layer = LSTMLayer(LSTMCell(H, **cell_kwargs))
  x = jnp.ones((B, T, F))
  variables = jax.eval_shape(layer.init, jax.random.key(0), x)
  fast_calls.clear()
  jax.eval_shape(functools.partial(layer.apply, segment_starts=STARTS, **TRAINING), variables, x)
  assert bool(fast_calls) == fast_path
