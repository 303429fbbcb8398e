import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from lstm import LSTMCell


def _init(cell, batch=3, features=4, seed=0):
  x = jax.random.normal(jax.random.key(seed), (batch, features))
  carry = cell.initialize_carry(None, x.shape)
  variables = cell.init(jax.random.key(seed + 1), carry, x)
  return variables, carry, x


def test_param_shapes_and_forget_bias():
  cell = LSTMCell(6, forget_bias=1.0, peephole=True, proj_size=3, layer_norm=True)
  variables, _, _ = _init(cell)
  p = variables['params']
  assert p['kernel'].shape == (4, 24) and p['recurrent_kernel'].shape == (3, 24)
  assert p['proj_kernel'].shape == (6, 3) and p['peephole'].shape == (3, 6)
  np.testing.assert_array_equal(p['bias'][6:12], 1.0)
  np.testing.assert_array_equal(p['bias'][:6], 0.0)
  zero = LSTMCell(6, forget_bias=0.0)
  np.testing.assert_array_equal(_init(zero)[0]['params']['bias'], 0.0)


def test_step_matches_hand_written_equations():
  cell = LSTMCell(5, activation='relu', recurrent_activation='hard_sigmoid')
  variables, _, x = _init(cell)
  p = variables['params']
  h0 = jax.random.normal(jax.random.key(7), (3, 5))
  c0 = jax.random.normal(jax.random.key(8), (3, 5))
  (h, c), out = cell.apply(variables, (h0, c0), x)
  z = x @ p['kernel'] + h0 @ p['recurrent_kernel'] + p['bias']
  i, f, g, o = np.split(np.asarray(z), 4, axis=-1)
  hs = lambda v: np.clip(v / 6 + 0.5, 0, 1)
  c_ref = hs(f) * c0 + hs(i) * np.maximum(g, 0)
  h_ref = hs(o) * np.maximum(c_ref, 0)
  np.testing.assert_allclose(c, c_ref, atol=1e-5)
  np.testing.assert_allclose(h, h_ref, atol=1e-5)
  np.testing.assert_array_equal(out, h)


def test_clipping_bounds_state():
  cell = LSTMCell(8, proj_size=4, cell_clip=0.3, proj_clip=0.1)
  variables, _, x = _init(cell)
  carry = (jnp.full((3, 4), 5.0), jnp.full((3, 8), 5.0))
  (h, c), _ = cell.apply(variables, carry, 10 * x)
  assert float(jnp.abs(c).max()) <= 0.3 + 1e-7
  assert float(jnp.abs(h).max()) <= 0.1 + 1e-7


@pytest.mark.slow  # numerical gradients of every option
def test_gradients_numerically_with_every_option():
  cell = LSTMCell(4, peephole=True, proj_size=3, cell_clip=0.6, proj_clip=0.25, layer_norm=True,
                  bias_init=nn.initializers.normal(0.5))
  variables, _, x = _init(cell, batch=2, features=3)
  params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(3), a.shape),
                        variables['params'])
  carry = (0.5 * jax.random.normal(jax.random.key(4), (2, 3)),
           0.5 * jax.random.normal(jax.random.key(5), (2, 4)))

  def loss(params, carry, x):
    (h, c), out = cell.apply({'params': params}, carry, x)
    (h, c), out = cell.apply({'params': params}, (h, c), x * 0.5)
    return jnp.sum(out ** 2) + jnp.sum(jnp.sin(c))

  # Both clips are active on some elements and keep clear of their boundaries, so the
  # finite differences see the clipped (zero-gradient) branch as well as the smooth one.
  def clipped_fraction(params, carry, x):
    (h, c), _ = cell.apply({'params': params}, carry, x)
    unclipped = cell.clone(cell_clip=None, proj_clip=None)
    (h_raw, c_raw), _ = unclipped.apply({'params': params}, carry, x)
    for raw, limit in ((c_raw, 0.6), (h_raw, 0.25)):
      margin = jnp.abs(jnp.abs(raw) - limit)
      assert float(margin.min()) > 1e-3
    return float(jnp.mean(jnp.abs(c_raw) > 0.6)), float(jnp.mean(jnp.abs(h_raw) > 0.25))

  c_frac, h_frac = clipped_fraction(params, carry, x)
  assert 0 < c_frac < 1 and 0 < h_frac < 1

  with jax.enable_x64():
    params64, carry64, x64 = jax.tree.map(lambda a: a.astype(jnp.float64), (params, carry, x))
    check_grads(loss, (params64, carry64, x64), order=1, modes=['rev'], atol=1e-6, rtol=1e-6)


def test_works_inside_flax_rnn():
  cell = LSTMCell(6)
  rnn = nn.RNN(cell)
  x = jax.random.normal(jax.random.key(0), (2, 5, 3))
  variables = rnn.init(jax.random.key(1), x)
  y = rnn.apply(variables, x)
  assert y.shape == (2, 5, 6)


@pytest.mark.parametrize('kwargs, match', [
    (dict(features=0), r'^features must be a positive integer, got 0$'),
    (dict(features=True), r'^features must be a positive integer, got True$'),
    (dict(features=4, proj_size=4), r'^proj_size must be smaller than features \(4\), got 4$'),
    (dict(features=4, proj_size=-1), r'^proj_size must be None or a positive integer, got -1$'),
    (dict(features=4, activation='relux'), "^activation='relux' is not a known activation"),
    (dict(features=4, recurrent_activation='nope'), "^recurrent_activation='nope' is not a known"),
    (dict(features=4, cell_clip=-1.0), r'^cell_clip must be None or a positive number, got -1.0$'),
    (dict(features=4, proj_size=2, proj_clip=0),
     r'^proj_clip must be None or a positive number, got 0$'),
    (dict(features=4, proj_clip=1.0), r'^proj_clip=1.0 needs a projection: set proj_size as well$'),
])
def test_bad_options_raise_on_construction(kwargs, match):
  with pytest.raises(ValueError, match=match):
    LSTMCell(**kwargs)
