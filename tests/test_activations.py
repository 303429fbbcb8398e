import jax.numpy as jnp
import numpy as np
import pytest

from lstm import activations


def test_names_cover_keras_set():
  for name in ['tanh', 'sigmoid', 'hard_sigmoid', 'relu', 'gelu', 'elu', 'softsign', 'linear',
               'identity']:
    assert callable(activations.get(name))


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match='recurrent_activation=.*nope.*hard_sigmoid.*tanh'):
    activations.get('nope', 'recurrent_activation')


def test_callable_passes_through():
  fn = lambda x: 2 * x
  assert activations.get(fn) is fn


def test_matches_keras_definitions():
  keras = pytest.importorskip('keras')
  x = np.linspace(-5, 5, 101).astype(np.float32)
  for name in ['hard_sigmoid', 'softsign', 'elu', 'gelu', 'sigmoid', 'relu', 'leaky_relu', 'silu']:
    theirs = np.asarray(keras.activations.get(name)(x))
    np.testing.assert_allclose(activations.get(name)(jnp.asarray(x)), theirs, atol=1e-6,
                               err_msg=name)


def test_name_of_roundtrip():
  assert activations.name_of(activations.get('relu')) == 'relu'
  assert activations.name_of('TANH') == 'tanh'
  assert activations.name_of(lambda x: x) is None
