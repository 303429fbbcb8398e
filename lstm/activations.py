"""Activation registry: names (Keras spelling) to JAX functions.

`get(name_or_fn)` resolves a name or passes a callable through; unknown names raise a
ValueError listing the valid ones. `hard_sigmoid` is Keras 3's definition, relu6(x + 3) / 6.
"""
from __future__ import annotations

from typing import Callable, Union

import jax
import jax.numpy as jnp

Activation = Union[str, Callable[[jax.Array], jax.Array]]


def _identity(x):
  return x


def _hard_sigmoid(x):
  return jnp.clip(x / 6.0 + 0.5, 0.0, 1.0)


def _leaky_relu(x):
  # Keras 3's default slope (JAX's and PyTorch's default is 0.01).
  return jax.nn.leaky_relu(x, negative_slope=0.2)


def _gelu(x):
  # Exact erf form, as torch.nn.GELU and keras.activations.gelu(approximate=False).
  return jax.nn.gelu(x, approximate=False)


REGISTRY: dict[str, Callable[[jax.Array], jax.Array]] = {
    'tanh': jnp.tanh,
    'sigmoid': jax.nn.sigmoid,
    'hard_sigmoid': _hard_sigmoid,
    'relu': jax.nn.relu,
    'relu6': jax.nn.relu6,
    'gelu': _gelu,
    'elu': jax.nn.elu,
    'selu': jax.nn.selu,
    'silu': jax.nn.silu,
    'swish': jax.nn.silu,
    'softsign': jax.nn.soft_sign,
    'softplus': jax.nn.softplus,
    'leaky_relu': _leaky_relu,
    'linear': _identity,
    'identity': _identity,
}


def names() -> list[str]:
  """The registered activation names, sorted."""
  return sorted(REGISTRY)


def get(activation: Activation, argument: str = 'activation') -> Callable[[jax.Array], jax.Array]:
  """Returns the function for `activation` (a registered name or a callable)."""
  if callable(activation):
    return activation
  if isinstance(activation, str) and activation.lower() in REGISTRY:
    return REGISTRY[activation.lower()]
  raise ValueError(
      f'{argument}={activation!r} is not a known activation; use a callable or one of: '
      + ', '.join(names()))


def name_of(activation: Activation) -> str | None:
  """The canonical registry name of `activation`, or None for an unregistered callable."""
  if isinstance(activation, str):
    get(activation)
    return activation.lower()
  for name, fn in REGISTRY.items():
    if fn is activation:
      return name
  return None
