"""The modules from Flax NNX (lstm/nnx.py): a training loop with `nnx.Optimizer` and `nnx.jit`,
dropout on in `train()` and off in `eval()`, and an `LSTMCell` inside `nnx.RNN`."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lstm import LSTMCell, LSTMLayer, StackedLSTM
from lstm import nnx as lstm_nnx

B, T, F, H = 4, 6, 3, 16


class Regressor(nnx.Module):
  """A stack and a linear head on its last output."""

  def __init__(self, x, rngs):
    self.lstm = lstm_nnx.to_nnx(StackedLSTM(num_layers=2, hidden_size=H, dropout=0.5), x,
                                rngs=rngs)
    self.head = nnx.Linear(H, 1, rngs=rngs)

  def __call__(self, x):
    y, _ = self.lstm(x)
    return self.head(y[:, -1])[:, 0]


def _data():
  x = jax.random.normal(jax.random.key(0), (B, T, F))
  return x, jnp.sum(x[:, :, 0], axis=1)


def test_training_loop_with_optimizer_and_jit():
  x, target = _data()
  model = Regressor(x, nnx.Rngs(params=0, dropout=1))
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, x, target):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - target) ** 2))(model)
    optimizer.update(model, grads)
    return loss

  @nnx.jit
  def evaluate(model, x, target):
    return jnp.mean((model(x) - target) ** 2)

  model.eval()
  before = float(evaluate(model, x, target))
  model.train()
  losses = [float(step(model, optimizer, x, target)) for _ in range(30)]
  model.eval()
  after = float(evaluate(model, x, target))
  assert np.all(np.isfinite(losses)) and after < 0.5 * before, (before, losses, after)


def test_dropout_on_in_train_and_off_in_eval():
  x, _ = _data()
  model = Regressor(x, nnx.Rngs(params=0, dropout=1))
  call = nnx.jit(lambda model, x: model(x))
  model.train()
  first, second = call(model, x), call(model, x)
  assert not np.allclose(first, second)  # a new dropout mask each call
  model.eval()
  third, fourth = call(model, x), call(model, x)
  np.testing.assert_array_equal(third, fourth)
  # eval mode is the linen module applied deterministically to the same parameters
  linen = model.lstm.linen
  variables = {'params': nnx.to_pure_dict(nnx.state(linen, nnx.Param))}
  y, _ = StackedLSTM(num_layers=2, hidden_size=H, dropout=0.5).apply(variables, x,
                                                                      deterministic=True)
  np.testing.assert_allclose(model.lstm(x)[0], y, atol=1e-6)
  # an explicit deterministic= wins over the mode
  model.train()
  np.testing.assert_allclose(model.lstm(x, deterministic=True)[0], y, atol=1e-6)


def test_layer_with_recurrent_dropout_follows_the_mode():
  x, _ = _data()
  layer = lstm_nnx.to_nnx(LSTMLayer(LSTMCell(H, recurrent_dropout=0.5)), x,
                          rngs=nnx.Rngs(params=0, dropout=1))
  layer.eval()
  np.testing.assert_array_equal(layer(x)[0], layer(x)[0])
  layer.train()
  assert not np.allclose(layer(x)[0], layer(x)[0])


def test_cell_in_nnx_rnn_equals_the_layer():
  x, _ = _data()
  cell = lstm_nnx.to_nnx(LSTMCell(H), x[:, 0], rngs=nnx.Rngs(0))
  rnn = nnx.RNN(cell, return_carry=True)
  carry, y = rnn(x)
  params = nnx.to_pure_dict(nnx.state(cell.linen, nnx.Param))
  want, (h, c) = LSTMLayer(LSTMCell(H)).apply({'params': {'cell': params}}, x)
  np.testing.assert_allclose(y, want, atol=1e-5)
  np.testing.assert_allclose(carry[0], h, atol=1e-5)  # (h, c), h first
  np.testing.assert_allclose(carry[1], c, atol=1e-5)


def test_a_cell_takes_one_example_input():
  with pytest.raises(TypeError, match='one example input'):
    lstm_nnx.to_nnx(LSTMCell(H), (jnp.zeros((B, H)),) * 2, jnp.zeros((B, F)), rngs=nnx.Rngs(0))

