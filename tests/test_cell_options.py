"""Cell options against a NumPy layer written from the equations: Greff et al.'s gate variants,
separate candidate/output activations, recurrent dropout, zoneout and weight drop.

The stochastic options are compared given the masks the layer drew (recovered with
`nn.intercept_methods` from `LSTMCell.noise`), on whichever path the layer dispatches to and on
the reference `lax.scan` path. Gradients: numerical checks in float64 here; the fast path's
against the reference path's in tests/test_fast.py.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from lstm import LSTMCell, LSTMLayer, StackedLSTM, fast
from lstm.cell import NO_NOISE

B, T, F, H = 3, 7, 4, 5
LENGTHS = np.array([7, 4, 2])
STARTS = np.array([[0, 0, 1, 0, 0, 1, 1], [1, 0, 0, 1, 0, 1, 0], [0, 1, 0, 0, 0, 0, 0]], bool)
TRAIN_KEY = jax.random.key(4)

ACTIVATIONS = {'tanh': np.tanh, 'linear': lambda v: v, 'relu': lambda v: np.maximum(v, 0.0)}


def sigmoid(v):
  return 1.0 / (1.0 + np.exp(-v))


def begins_reading(starts, b, t, n, reverse):
  """Whether a segment's reading begins at step t of row b: its first step, or its last when read
  backwards."""
  if starts is None:
    return False
  return bool(t + 1 < n and starts[b, t + 1]) if reverse else bool(starts[b, t])


def numpy_layer(params, x, options, lengths, h0, c0, reverse=False, starts=None, noise=NO_NOISE):
  """Outputs (B, T, H) and final (h, c) of one layer, one row and one step at a time (float64).

  `noise`: the masks the layer drew; its zoneout masks are indexed by the step of the layer's
  own reading order. Without zoneout masks, zoneout is its expectation.
  """
  get = lambda name, default: options.get(name, default)
  kernel, rec, bias = (np.asarray(params[k], np.float64)
                       for k in ('kernel', 'recurrent_kernel', 'bias'))
  if noise.weight is not None:
    rec = rec * np.asarray(noise.weight)
  act = get('activation', 'tanh')
  candidate = ACTIVATIONS[get('candidate_activation', None) or act]
  output = ACTIVATIONS[get('output_activation', None) or act]
  masks = [None if m is None else np.asarray(m, np.float64) for m in noise]
  recurrent, _, zone_c, zone_h = masks
  y = np.zeros(x.shape[:2] + (h0.shape[-1],))
  hs, cs = [], []
  for b in range(x.shape[0]):
    n = x.shape[1] if lengths is None else lengths[b]
    h, c = np.asarray(h0[b], np.float64), np.asarray(c0[b], np.float64)
    order = range(n - 1, -1, -1) if reverse else range(n)
    for k, t in enumerate(order):
      if begins_reading(starts, b, t, n, reverse):
        h, c = np.zeros_like(h), np.zeros_like(c)
      h_in = h if recurrent is None else h * recurrent[b]
      zi, zf, zg, zo = np.split(x[b, t] @ kernel + h_in @ rec + bias, 4)
      f = sigmoid(zf) if get('forget_gate', True) else 1.0
      i = 1.0 - f if get('coupled_gates', False) else (
          sigmoid(zi) if get('input_gate', True) else 1.0)
      c_new = f * c + i * candidate(zg)
      o = sigmoid(zo) if get('output_gate', True) else 1.0
      h_new = o * output(c_new)
      keep_c = get('zoneout_cell', 0.0) if zone_c is None else zone_c[k, b]
      keep_h = get('zoneout_hidden', 0.0) if zone_h is None else zone_h[k, b]
      c = keep_c * c + (1 - keep_c) * c_new
      h = keep_h * h + (1 - keep_h) * h_new
      y[b, t] = h
    hs.append(h)
    cs.append(c)
  return y, (np.stack(hs), np.stack(cs))


def apply_with_noise(model, variables, *args, **kwargs):
  """`model.apply(variables, *args, **kwargs)` and the Noise of every cell, in call order."""
  seen = []

  def capture(next_fun, call_args, call_kwargs, context):
    out = next_fun(*call_args, **call_kwargs)
    if isinstance(context.module, LSTMCell) and context.method_name == 'noise':
      seen.append(out)
    return out

  with nn.intercept_methods(capture):
    out = model.apply(variables, *args, **kwargs)
  return out, seen


def both_paths(fn, *args):
  """`fn(*args)` jitted as dispatched, and jitted anew on the reference path."""
  got = jax.jit(fn)(*args)
  with fast.reference_path():
    want = jax.jit(lambda *a: fn(*a))(*args)
  return got, want


def random_params(layer, seed=1, scale=0.5):
  shapes = jax.eval_shape(layer.init, jax.random.key(0), jnp.zeros((B, T, F)))
  leaves, treedef = jax.tree.flatten(shapes)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [scale * jax.random.normal(k, a.shape, a.dtype)
                                      for k, a in zip(keys, leaves)])


OPTIONS = {
    'NIG': dict(input_gate=False),
    'NFG': dict(forget_gate=False),
    'NOG': dict(output_gate=False),
    'CIFG': dict(coupled_gates=True),
    'NIAF': dict(candidate_activation='linear'),
    'NOAF': dict(output_activation='linear'),
    'relu-tanh_candidate': dict(activation='relu', candidate_activation='tanh'),
    'recurrent_dropout': dict(recurrent_dropout=0.4),
    'weight_drop': dict(weight_drop=0.5),
    'zoneout': dict(zoneout_cell=0.3, zoneout_hidden=0.2),
    'all': dict(coupled_gates=True, output_activation='linear', recurrent_dropout=0.3,
                weight_drop=0.3, zoneout_cell=0.2, zoneout_hidden=0.4),
}
# option -> its field of `Noise`
MASKS = {'recurrent_dropout': 'recurrent', 'weight_drop': 'weight', 'zoneout_cell': 'zoneout_cell',
         'zoneout_hidden': 'zoneout_hidden'}


@pytest.mark.parametrize('reverse, padded_with_resets', [(False, False), (True, True)],
                         ids=['forward', 'reverse-padded-resets'])
@pytest.mark.parametrize('training', [False, True], ids=['deterministic', 'training'])
@pytest.mark.parametrize('case', list(OPTIONS))
def test_option_matches_numpy(case, training, reverse, padded_with_resets):
  options = OPTIONS[case]
  layer = LSTMLayer(LSTMCell(H, **options), reverse=reverse)
  params = random_params(layer)
  x = jax.random.normal(jax.random.key(2), (B, T, F))
  carry = tuple(0.5 * jax.random.normal(k, (B, H)) for k in jax.random.split(jax.random.key(3)))
  lengths = LENGTHS if padded_with_resets else None
  starts = STARTS if padded_with_resets else None

  def run(params, x, carry):
    return apply_with_noise(layer, params, x, None if lengths is None else jnp.asarray(lengths),
                            carry, None if starts is None else jnp.asarray(starts),
                            deterministic=not training, rngs={'dropout': TRAIN_KEY})

  for (y, final), (noise,) in both_paths(run, params, x, carry):
    for option, field in MASKS.items():
      assert (getattr(noise, field) is not None) == bool(training and options.get(option)), option
    want_y, want_final = numpy_layer(params['params']['cell'], np.asarray(x, np.float64), options,
                                     lengths, carry[0], carry[1], reverse, starts, noise)
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
    for got, want in zip(final, want_final):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # numerical gradients per option
@pytest.mark.parametrize('options', [
    dict(zoneout_cell=0.3, zoneout_hidden=0.4),
    dict(input_gate=False, output_gate=False, output_activation='relu'),
    dict(forget_gate=False, candidate_activation='linear', zoneout_cell=0.5),
    dict(coupled_gates=True, recurrent_dropout=0.4, weight_drop=0.3),
], ids=['zoneout', 'NIG-NOG-relu', 'NFG-NIAF-zoneout', 'CIFG-dropouts'])
def test_numerical_gradients_training(fast_calls, options):
  """Reverse-mode gradients equal finite differences in float64, the masks fixed by the key;
  padded, reversed, with resets (CIFG with dropouts is on the fast path, the others not)."""
  layer = LSTMLayer(LSTMCell(4, **options), reverse=True)
  shape = (2, 5, 3)
  with jax.enable_x64():
    x = jax.random.normal(jax.random.key(0), shape, jnp.float64)
    params = jax.tree.map(lambda a: a.astype(jnp.float64),
                          layer.init(jax.random.key(1), x.astype(jnp.float32)))
    carry = tuple(0.5 * jax.random.normal(k, (2, 4), jnp.float64)
                  for k in jax.random.split(jax.random.key(2)))
    lengths = jnp.array([5, 3])
    starts = jnp.array([[0, 0, 1, 0, 1], [1, 1, 0, 0, 0]], bool)

    def loss(params, x, carry):
      y, (h, c) = layer.apply(params, x, lengths, carry, starts, deterministic=False,
                              rngs={'dropout': TRAIN_KEY})
      return jnp.sum(jnp.sin(y)) + jnp.sum(h * c)

    fast_calls.clear()
    check_grads(loss, (params, x, carry), order=1, modes=['rev'], atol=1e-6, rtol=1e-6)
    assert bool(fast_calls) == ('coupled_gates' in options)


@pytest.mark.parametrize('options, unused', [
    (dict(input_gate=False), 0), (dict(forget_gate=False), 1), (dict(output_gate=False), 3),
    (dict(coupled_gates=True), 0),
])
def test_gate_variants_keep_parameter_shapes_and_unused_columns_get_no_gradient(options, unused):
  layer = LSTMLayer(LSTMCell(H, **options))
  plain = LSTMLayer(LSTMCell(H))
  x = jax.random.normal(jax.random.key(0), (B, T, F))
  variables = layer.init(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, variables) == \
      jax.tree.map(jnp.shape, plain.init(jax.random.key(1), x))
  grads = jax.grad(lambda v: jnp.sum(layer.apply(v, x, jnp.asarray(LENGTHS))[0] ** 2))(variables)
  columns = slice(unused * H, (unused + 1) * H)
  for name in ('kernel', 'recurrent_kernel', 'bias'):
    g = np.asarray(grads['params']['cell'][name])
    np.testing.assert_array_equal(g[..., columns], 0.0)
    assert np.all(np.abs(np.delete(g, np.arange(columns.start, columns.stop), axis=-1)).sum(0) > 0)


def test_noise_masks():
  """Dropout masks hold 0 or 1/(1-p), zoneout masks 0 or 1, at about their rates; zoneout masks
  change from step to step; each option's mask is the same whichever other options are set."""
  cell = LSTMCell(64, recurrent_dropout=0.25, weight_drop=0.5, zoneout_cell=0.2,
                  zoneout_hidden=0.4)
  noise = cell.draw_noise(jax.random.key(0), 50, 200)
  assert noise.recurrent.shape == (200, 64) and noise.weight.shape == (64, 256)
  assert noise.zoneout_cell.shape == noise.zoneout_hidden.shape == (50, 200, 64)
  for mask, rate, value in [(noise.recurrent, 0.25, 1 / 0.75), (noise.weight, 0.5, 2.0),
                            (noise.zoneout_cell, 0.8, 1.0), (noise.zoneout_hidden, 0.6, 1.0)]:
    mask = np.asarray(mask)
    assert set(np.unique(mask)) == {0.0, np.float32(value)}
    assert abs(np.mean(mask == 0) - rate) < 0.03
  assert not np.array_equal(noise.zoneout_cell[0], noise.zoneout_cell[1])
  for option, field in MASKS.items():
    alone = LSTMCell(64, **{option: getattr(cell, option)}).draw_noise(jax.random.key(0), 50, 200)
    np.testing.assert_array_equal(getattr(alone, field), getattr(noise, field))


@pytest.mark.slow  # compiles every training option
def test_training_options_are_inert_when_deterministic_and_need_the_dropout_rng():
  x = jax.random.normal(jax.random.key(0), (B, T, F))
  plain = StackedLSTM(num_layers=2, hidden_size=H, bidirectional=True)
  noisy = StackedLSTM(num_layers=2, hidden_size=H, bidirectional=True, recurrent_dropout=0.5,
                      weight_drop=0.5)
  variables = plain.init(jax.random.key(1), x)
  y_plain, c_plain = plain.apply(variables, x)
  with pytest.raises(ValueError, match='deterministic='):  # as flax.linen.Dropout
    noisy.apply(variables, x)
  y_eval, c_eval = noisy.apply(variables, x, deterministic=True)  # no rng needed
  np.testing.assert_array_equal(y_eval, y_plain)
  jax.tree.map(np.testing.assert_array_equal, c_eval, c_plain)
  with pytest.raises(Exception, match='dropout'):
    noisy.apply(variables, x, deterministic=False)
  train = lambda key: noisy.apply(variables, x, deterministic=False, rngs={'dropout': key})[0]
  np.testing.assert_array_equal(train(jax.random.key(5)), train(jax.random.key(5)))
  assert not np.allclose(train(jax.random.key(5)), y_plain)
  assert not np.allclose(train(jax.random.key(5)), train(jax.random.key(6)))


@pytest.mark.parametrize('kwargs, match', [
    (dict(recurrent_dropout=1.5), r'^recurrent_dropout must be in \[0, 1\), got 1.5$'),
    (dict(recurrent_dropout=1.0), r'recurrent_dropout must be in \[0, 1\), got 1.0'),
    (dict(zoneout_cell=-0.1), r'zoneout_cell must be in \[0, 1\), got -0.1'),
    (dict(zoneout_hidden=True), r'zoneout_hidden must be in \[0, 1\), got True'),
    (dict(weight_drop='0.5'), r"weight_drop must be in \[0, 1\), got '0.5'"),
    (dict(coupled_gates=True, input_gate=False),
     r'^coupled_gates=True makes the input gate 1 - f: it needs input_gate=True, got '
     r'input_gate=False$'),
    (dict(coupled_gates=True, input_gate=False, forget_gate=False),
     r'it needs input_gate=True and forget_gate=True, got input_gate=False, forget_gate=False$'),
    (dict(candidate_activation='tahn'), "candidate_activation='tahn' is not a known activation"),
    (dict(output_activation='nope'), "output_activation='nope' is not a known activation"),
])
def test_bad_options_raise_one_line(kwargs, match):
  with pytest.raises(ValueError, match=match) as info:
    LSTMCell(4, **kwargs)
  assert '\n' not in str(info.value)


def test_stack_names_a_bad_option_as_given():
  # A stack attribute is every layer's: named as the attribute; a per-layer one with its layer.
  with pytest.raises(ValueError, match=r'^recurrent_dropout must be in \[0, 1\), got 1.5$'):
    StackedLSTM(num_layers=2, hidden_size=4, recurrent_dropout=1.5)
  with pytest.raises(ValueError,
                     match=r"^cells\[1\]\['zoneout_cell'\] must be in \[0, 1\), got 1.0$"):
    StackedLSTM(cells=({'features': 4}, {'features': 4, 'zoneout_cell': 1.0}))
