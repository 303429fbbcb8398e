"""Flax's conventions where Flax has one: `tabulate`, narrow parameter dtypes, float64 under
`jax_enable_x64`, `deterministic` as `nn.Dropout` asks for it, and the carry's order in the help
a user reads first."""
import pydoc

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm
from lstm import LSTMCell, LSTMLayer, StackedLSTM, fast, nnx as lstm_nnx
from tests.test_fast import _assert_trees_close

B, T, F, H = 3, 5, 4, 16
LENGTHS = jnp.array([5, 3, 1])


def _x(dtype=jnp.float32):
  return jax.random.normal(jax.random.key(0), (B, T, F), dtype)


def test_tabulate_of_a_stack():
  table = StackedLSTM(num_layers=2, hidden_size=H, dropout=0.5).tabulate(
      jax.random.key(0), _x(), depth=2)
  assert 'layer_0' in table and 'layer_1' in table
  # parameters of two layers: kernels (in, 4H), recurrent kernels (H, 4H), biases (4H)
  total = (F * 4 * H + H * 4 * H + 4 * H) + (H * 4 * H + H * 4 * H + 4 * H)
  assert f'{total:,}' in table.replace('\n', ' ')


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16])
def test_narrow_parameter_dtypes(dtype):
  """The orthogonal recurrent kernel is made in float32 and cast: its gate blocks stay
  orthogonal to the dtype's precision."""
  model = StackedLSTM(num_layers=2, hidden_size=H, param_dtype=dtype)
  variables = model.init(jax.random.key(1), _x())
  assert all(a.dtype == dtype for a in jax.tree.leaves(variables))
  w = np.asarray(variables['params']['layer_1']['forward']['recurrent_kernel'], np.float32)
  np.testing.assert_allclose(w @ w.T, np.eye(H), atol=2e-2)
  loss = lambda v, x: jnp.sum(model.apply(v, x, LENGTHS)[0].astype(jnp.float32) ** 2)
  grads = jax.jit(jax.grad(loss))(variables, _x(dtype))
  assert all(g.dtype == dtype and np.all(np.isfinite(np.asarray(g, np.float32)))
             for g in jax.tree.leaves(grads))


def test_float64_inputs_under_x64():
  """float64 inputs compute in float64 (zero carries take that dtype), never in the float32
  kernel, and agree with the float32 computation."""
  model = StackedLSTM(num_layers=3, hidden_size=H, scan_layers=True)
  variables = model.init(jax.random.key(1), _x())
  want = jax.jit(lambda v, x: model.apply(v, x, LENGTHS))(variables, _x())
  with jax.enable_x64(True):
    x64 = _x().astype(jnp.float64)
    step = jax.jit(lambda v, x: model.apply(v, x, LENGTHS))
    got = step(variables, x64)
    assert all(a.dtype == jnp.float64 for a in jax.tree.leaves(got))
    text = jax.jit(jax.grad(lambda v: jnp.sum(model.apply(v, x64)[0]))).lower(variables).as_text()
    assert 'stacked_lstm_' not in text
    layer = LSTMLayer(LSTMCell(H))
    y, carry = layer.apply(layer.init(jax.random.key(2), x64), x64)
    assert y.dtype == carry[0].dtype == carry[1].dtype == jnp.float64
  _assert_trees_close(got, want, tol=1e-5)


@pytest.mark.parametrize('module, options', [
    (StackedLSTM(num_layers=2, hidden_size=H, dropout=0.5), 'dropout=0.5'),
    (StackedLSTM(num_layers=1, hidden_size=H, zoneout_cell=0.2), 'zoneout_cell=0.2'),
    (LSTMLayer(LSTMCell(H, recurrent_dropout=0.3)), 'recurrent_dropout=0.3'),
], ids=['stack-dropout', 'stack-zoneout', 'layer-recurrent_dropout'])
def test_training_time_options_need_deterministic(module, options):
  """As flax.linen.Dropout: with dropout (or another training-time option) on, a call that does
  not say `deterministic` is refused (init may leave it out); given, it is followed."""
  x = _x()
  variables = module.init(jax.random.key(1), x)
  with pytest.raises(ValueError, match=f'{options} set, so its call needs deterministic='):
    module.apply(variables, x)
  train = lambda key: module.apply(variables, x, deterministic=False,
                                   rngs={'dropout': jax.random.key(key)})[0]
  evaluate = module.apply(variables, x, deterministic=True)[0]
  assert not np.allclose(train(3), evaluate)
  assert not np.allclose(train(3), train(4))


def test_without_training_time_options_deterministic_may_be_left_out():
  model = StackedLSTM(num_layers=2, hidden_size=H)
  variables = model.init(jax.random.key(1), _x())
  np.testing.assert_array_equal(model.apply(variables, _x())[0],
                                model.apply(variables, _x(), deterministic=False)[0])


@pytest.mark.parametrize('obj', [
    LSTMCell, LSTMCell.__call__, LSTMLayer, LSTMLayer.__call__, StackedLSTM.__call__,
    lstm.run_sequence, lstm_nnx, lstm_nnx.Cell.__call__, lstm_nnx.Module.__call__, lstm.layer],
    ids=lambda o: getattr(o, '__qualname__', getattr(o, '__name__', str(o))))
def test_help_shows_the_carry_order(obj):
  """help() names the carry `(h, c)` and the conversion to Flax's `(c, h)`; on a `__call__` it
  lists the arguments."""
  text = pydoc.render_doc(obj, renderer=pydoc.plaintext)
  assert '(h, c)' in text
  if getattr(obj, '__name__', '') == '__call__':
    assert 'Args:' in text and 'Returns:' in text
  else:
    assert 'flax_carry = (c, h)' in text


def test_a_flax_ordered_carry_gives_other_outputs():
  """Why the docstrings say it loudly: a (c, h) carry runs (same shapes) and computes another
  function."""
  layer = LSTMLayer(LSTMCell(H))
  x = _x()
  variables = layer.init(jax.random.key(1), x)
  h = jax.random.normal(jax.random.key(2), (B, H))
  c = jax.random.normal(jax.random.key(3), (B, H))
  with fast.reference_path():
    right = layer.apply(variables, x, initial_carry=(h, c))[0]
    flax_order = layer.apply(variables, x, initial_carry=(c, h))[0]
  assert not np.allclose(right, flax_order)
