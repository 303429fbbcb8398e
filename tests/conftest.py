"""Shared test set-up: Keras runs on the JAX backend; float32 matmuls at full precision; the
`fast_calls` fixture."""
import os

os.environ.setdefault('KERAS_BACKEND', 'jax')

import jax  # noqa: E402
import pytest  # noqa: E402

from lstm import fast  # noqa: E402

jax.config.update('jax_default_matmul_precision', 'highest')


@pytest.fixture
def fast_calls(monkeypatch):
  """Counts the layers that took the fast path while tracing."""
  calls = []
  original = fast.run_layer

  def counting(*args, **kwargs):
    calls.append(1)
    return original(*args, **kwargs)

  monkeypatch.setattr(fast, 'run_layer', counting)
  return calls
