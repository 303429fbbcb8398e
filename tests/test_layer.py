import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm import LSTMCell, LSTMLayer, reverse_padded

B, T, F, H = 3, 7, 4, 5
LENGTHS = jnp.array([7, 4, 1])


def _setup(reverse=False, **cell_kwargs):
  layer = LSTMLayer(LSTMCell(H, **cell_kwargs), reverse=reverse)
  x = jax.random.normal(jax.random.key(0), (B, T, F))
  variables = layer.init(jax.random.key(1), x)
  return layer, variables, x


def test_reverse_padded_is_an_involution_that_keeps_padding():
  x = jnp.arange(T * B).reshape(T, B)
  r = reverse_padded(x, LENGTHS)
  np.testing.assert_array_equal(r[:4, 1], x[:4, 1][::-1])
  np.testing.assert_array_equal(r[4:, 1], x[4:, 1])
  np.testing.assert_array_equal(reverse_padded(r, LENGTHS), x)


@pytest.mark.parametrize('reverse', [False, True])
def test_padded_sequence_equals_truncated_sequence(reverse):
  layer, variables, x = _setup(reverse=reverse)
  y, (h, c) = layer.apply(variables, x, seq_lengths=LENGTHS)
  for b, n in enumerate(np.asarray(LENGTHS)):
    y_b, (h_b, c_b) = layer.apply(variables, x[b:b + 1, :n])
    np.testing.assert_allclose(y[b, :n], y_b[0], atol=1e-6)
    np.testing.assert_array_equal(y[b, n:], 0.0)
    np.testing.assert_allclose(h[b], h_b[0], atol=1e-6)
    np.testing.assert_allclose(c[b], c_b[0], atol=1e-6)


@pytest.mark.parametrize('reverse', [False, True])
def test_padding_values_change_nothing(reverse):
  layer, variables, x = _setup(reverse=reverse, peephole=True, layer_norm=True)
  noise = jax.random.normal(jax.random.key(5), x.shape) * 100
  pad = (jnp.arange(T)[None, :] >= LENGTHS[:, None])[..., None]
  y1, c1 = layer.apply(variables, x, seq_lengths=LENGTHS)
  y2, c2 = layer.apply(variables, jnp.where(pad, noise, x), seq_lengths=LENGTHS)
  np.testing.assert_array_equal(y1, y2)
  jax.tree.map(np.testing.assert_array_equal, c1, c2)


def test_reverse_without_padding_is_time_flip():
  layer, variables, x = _setup(reverse=True)
  forward = LSTMLayer(LSTMCell(H))
  y_rev, carry_rev = layer.apply(variables, x)
  y_fwd, carry_fwd = forward.apply(variables, x[:, ::-1])
  np.testing.assert_allclose(y_rev, y_fwd[:, ::-1], atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), carry_rev, carry_fwd)


def test_carry_across_chunks_equals_whole_sequence():
  layer, variables, x = _setup()
  y, carry = layer.apply(variables, x)
  y1, carry1 = layer.apply(variables, x[:, :3])
  y2, carry2 = layer.apply(variables, x[:, 3:], initial_carry=carry1)
  np.testing.assert_allclose(jnp.concatenate([y1, y2], 1), y, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), carry2, carry)


def test_remat_gives_same_values_and_gradients():
  layer, variables, x = _setup()
  remat = LSTMLayer(LSTMCell(H), remat=True)
  loss = lambda m: lambda v: jnp.sum(m.apply(v, x, seq_lengths=LENGTHS)[0] ** 2)
  np.testing.assert_allclose(loss(remat)(variables), loss(layer)(variables), rtol=1e-6)
  g1, g2 = jax.grad(loss(layer))(variables), jax.grad(loss(remat))(variables)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g1, g2)


@pytest.mark.parametrize('x_shape, lengths, error, match', [
    ((B, T), None, ValueError, r'^x must have rank 3 \(batch, time, features\), got shape'),
    ((B, T, F + 2), None, ValueError,
     rf'^x has {F + 2} features \(its last axis\), but the variables were made for {F}: give x '
     rf'of shape \(batch, time, {F}\)$'),
    ((B, T, F), jnp.array([1, 2]), ValueError,
     rf'^seq_lengths must have shape \(batch,\) = \({B},\), got \(2,\)$'),
    ((B, T, F), jnp.array([1, 2, 9]), ValueError, r'^seq_lengths must lie in \[0, 7\]'),
    ((B, T, F), jnp.array([1.0, 2.0, 3.0]), TypeError,
     r'^seq_lengths must have an integer dtype, got float32$'),
])
def test_bad_inputs(x_shape, lengths, error, match):
  layer, variables, _ = _setup()
  with pytest.raises(error) as info:
    layer.apply(variables, jnp.ones(x_shape), seq_lengths=lengths)
  assert re.search(match, str(info.value)), str(info.value)  # (pytest's match= sees JAX's note)


@pytest.mark.parametrize('carry, error, match', [
    (jnp.zeros((B, H)), ValueError,
     rf'^initial_carry must be an \(h, c\) pair of arrays, got an array of shape \({B}, {H}\)$'),
    ((jnp.zeros((B, H)),) * 3, ValueError,
     r'^initial_carry must be an \(h, c\) pair of arrays, got a tuple of 3$'),
    ((jnp.zeros((B, H)), jnp.zeros((B + 1, H))), ValueError,
     rf'^initial_carry\[1\] \(c\) must have shape \(batch, {H}\) = \({B}, {H}\), got an array of '
     rf'shape \({B + 1}, {H}\)$'),
    ((jnp.zeros((B, H), jnp.float16), jnp.zeros((B, H), jnp.float16)), TypeError,
     r'^initial_carry must hold h and c in one floating dtype, float32 \(the layer computes in '
     r'it\) or wider, got h float16 and c float16$'),
])
def test_bad_initial_carry(carry, error, match):
  layer, variables, x = _setup()
  with pytest.raises(error) as info:
    layer.apply(variables, x, initial_carry=carry)
  assert re.search(match, str(info.value)), str(info.value)


def test_projected_carry_checks_the_projected_width():
  layer, variables, x = _setup(proj_size=2)
  y, _ = layer.apply(variables, x, initial_carry=(jnp.zeros((B, 2)), jnp.zeros((B, H))))
  assert y.shape == (B, T, 2)
  with pytest.raises(ValueError, match=r'^initial_carry\[0\] \(h\) must have shape \(batch, 2\)'):
    layer.apply(variables, x, initial_carry=(jnp.zeros((B, H)), jnp.zeros((B, H))))
