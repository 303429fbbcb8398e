"""Shared test set-up: Keras runs on the JAX backend; float32 matmuls at full precision."""
import os

os.environ.setdefault('KERAS_BACKEND', 'jax')

import jax  # noqa: E402

jax.config.update('jax_default_matmul_precision', 'highest')
