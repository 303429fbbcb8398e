"""Equivalence with torch.nn.LSTM, Keras 3 LSTM and Flax's OptimizedLSTMCell; weight conversion.

Every comparison runs the real library on the same weights and inputs (float32, tolerance 1e-5).
"""
import functools
import os
import warnings

os.environ.setdefault('KERAS_BACKEND', 'jax')

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.utils.prune  # noqa: E402

from lstm import StackedLSTM, interop, looped_to_scanned, scanned_to_looped  # noqa: E402
from tests.test_cell_options import apply_with_noise  # noqa: E402

# torch says so on every LSTM with proj_size; it is about speed, not results.
pytestmark = pytest.mark.filterwarnings('ignore:LSTM with projections is not supported')

B, T, F, H = 3, 7, 5, 6
LENGTHS = np.array([7, 3, 5], np.int32)
TOL = dict(rtol=1e-5, atol=1e-5)


def inputs(seed=0, features=F):
  return np.random.default_rng(seed).normal(size=(B, T, features)).astype(np.float32)


def close(actual, expected):
  np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), **TOL)


def random_like(tree, seed=0, scale=0.3):
  """Normal float32 arrays with the shapes of `tree` (eval_shape output or arrays)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda a: jnp.asarray(rng.normal(scale=scale, size=a.shape).astype(np.float32)), tree)


def random_variables(model, seed=0):
  """Variables of `model` for `inputs()`: its init's structure, random values (init is slow)."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((B, T, F)))
  return random_like(shapes, seed)


def apply(model, variables, x, lengths=None):
  """`model.apply` under jit (one compile is faster than eager op-by-op dispatch)."""
  lengths = None if lengths is None else jnp.asarray(lengths)
  return jax.jit(functools.partial(model.apply, deterministic=True))(
      variables, jnp.asarray(x), seq_lengths=lengths)


# ------------------------------------------------------------------------------------- PyTorch


def torch_lstm(num_layers=1, bidirectional=False, proj_size=0, bias=True, batch_first=True,
               seed=0, **kwargs):
  torch.manual_seed(seed)
  return torch.nn.LSTM(F, H, num_layers=num_layers, bias=bias, batch_first=batch_first,
                       bidirectional=bidirectional, proj_size=proj_size, **kwargs)


def run_torch(module, x, lengths=None):
  """Batch-major outputs (zero past each length) and (h_n, c_n) of `module` on numpy `x`."""
  module.eval()  # no dropout
  xt = torch.from_numpy(x)
  if not module.batch_first:
    xt = xt.transpose(0, 1)
  with torch.no_grad():
    if lengths is None:
      out, (h, c) = module(xt)
    else:
      packed = torch.nn.utils.rnn.pack_padded_sequence(
          xt, torch.from_numpy(lengths).long(), batch_first=module.batch_first,
          enforce_sorted=False)
      out, (h, c) = module(packed)
      out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=module.batch_first,
                                                       total_length=T)
  if not module.batch_first:
    out = out.transpose(0, 1)
  return out.numpy(), h.numpy(), c.numpy()


def torch_layout(carries, bidirectional):
  """Our per-layer carries as PyTorch's h_n, c_n: (layers * directions, B, .)."""
  flat = [d for layer in carries for d in (layer if bidirectional else (layer,))]
  return np.stack([np.asarray(h) for h, _ in flat]), np.stack([np.asarray(c) for _, c in flat])


TORCH_CONFIGS = [
    dict(num_layers=1),
    dict(num_layers=3),
    dict(num_layers=1, bidirectional=True),
    dict(num_layers=3, bidirectional=True),
    dict(num_layers=2, proj_size=3),
    dict(num_layers=2, bidirectional=True, proj_size=4),
    dict(num_layers=2, bias=False),
    dict(num_layers=2, bidirectional=True, proj_size=3, bias=False),
]


@pytest.mark.parametrize('padded', [False, True], ids=['full', 'padded'])
@pytest.mark.parametrize('config', TORCH_CONFIGS, ids=lambda c: '-'.join(
    f'{k}={v}' for k, v in c.items()))
def test_matches_torch(config, padded):
  module = torch_lstm(**config)
  model, variables = interop.from_torch(module)
  x = inputs()
  lengths = LENGTHS if padded else None
  out, h_n, c_n = run_torch(module, x, lengths)
  y, carries = apply(model, variables, x, lengths)
  h, c = torch_layout(carries, module.bidirectional)
  assert y.shape == out.shape and h.shape == h_n.shape and c.shape == c_n.shape
  if padded:
    valid = np.arange(T)[None, :] < LENGTHS[:, None]
    close(np.asarray(y)[valid], out[valid])
    assert np.all(np.asarray(y)[~valid] == 0)
  else:
    close(y, out)
  close(h, h_n)
  close(c, c_n)


def test_from_torch_variables_and_options():
  module = torch_lstm(num_layers=2, bidirectional=True, proj_size=3, dropout=0.25,
                      dtype=torch.float64)
  model, variables = interop.from_torch(module)
  assert set(variables) == {'params'}
  assert set(variables['params']) == {'layer_0', 'layer_1'}
  for leaf in jax.tree.leaves(variables):
    assert isinstance(leaf, jax.Array) and leaf.dtype == jnp.float32
  shapes = jax.tree.map(jnp.shape, variables['params']['layer_1']['backward'])
  assert shapes == {'kernel': (6, 24), 'recurrent_kernel': (3, 24), 'bias': (24,),
                    'proj_kernel': (6, 3)}
  assert (model.depth, model.hidden_size, model.proj_size, model.bidirectional,
          model.dropout, model.use_bias) == (2, H, 3, True, 0.25, True)
  # The computation is the float64 module's, up to float32 rounding.
  x = inputs()
  out, _, _ = run_torch(module, x.astype(np.float64))
  close(apply(model, variables, x)[0], out)


def test_from_torch_ignores_batch_first():
  module = torch_lstm(num_layers=2, bidirectional=True, batch_first=False)
  model, variables = interop.from_torch(module)
  x = inputs()
  out, h_n, _ = run_torch(module, x)  # fed time-major, returned batch-major
  y, carries = apply(model, variables, x)
  close(y, out)
  close(torch_layout(carries, True)[0], h_n)


def test_from_torch_reads_pruned_weights():
  module = torch_lstm(num_layers=1)
  torch.nn.utils.prune.l1_unstructured(module, 'weight_hh_l0', amount=0.5)
  model, variables = interop.from_torch(module)
  close(variables['params']['layer_0']['forward']['recurrent_kernel'],
        module.weight_hh_l0.detach().numpy().T)
  x = inputs()
  close(apply(model, variables, x)[0], run_torch(module, x)[0])


@pytest.mark.parametrize('module', [torch.nn.GRU(F, H), torch.nn.LSTMCell(F, H),
                                    torch.nn.RNN(F, H), torch.nn.Linear(F, H)],
                         ids=lambda m: type(m).__name__)
def test_from_torch_refuses_other_modules(module):
  with pytest.raises(TypeError, match=r'^from_torch\(module\): module must be a torch\.nn\.LSTM, '
                                      rf'got torch\.nn\..*\.{type(module).__name__}$'):
    interop.from_torch(module)


def test_from_torch_refuses_missing_weights():
  module = torch_lstm(num_layers=1)
  del module.weight_hh_l0
  with pytest.raises(ValueError, match=r'^from_torch\(module\): module\.weight_hh_l0 is missing '
                                       r'\(got NoneType\); torch\.nn\.LSTM\(input_size=5, '
                                       r'hidden_size=6, num_layers=1, .*\) has that tensor$'):
    interop.from_torch(module)


@pytest.mark.parametrize('name, shape', [('weight_ih_l1', (4 * H, F)),
                                         ('weight_hh_l0_reverse', (4 * H, H + 1)),
                                         ('bias_hh_l1_reverse', (4 * H + 1,))])
def test_from_torch_refuses_a_weight_of_another_shape(name, shape):
  module = torch_lstm(num_layers=2, bidirectional=True)
  setattr(module, name, torch.nn.Parameter(torch.zeros(shape)))
  needed = tuple(getattr(torch_lstm(num_layers=2, bidirectional=True), name).shape)
  with pytest.raises(ValueError) as info:
    interop.from_torch(module)
  assert str(info.value) == (
      f'from_torch(module): module.{name} has shape {shape}; torch.nn.LSTM(input_size={F}, '
      f'hidden_size={H}, num_layers=2, bidirectional=True, bias=True, proj_size=0) needs {needed}')


def test_from_torch_refuses_another_mode():
  module = torch_lstm()
  module.mode = 'GRU'
  with pytest.raises(ValueError, match=r"^from_torch\(module\): module\.mode must be 'LSTM', got "
                                       r"'GRU'$"):
    interop.from_torch(module)


def assert_same_state(a, b):
  sa, sb = a.state_dict(), b.state_dict()
  assert list(sa) == list(sb)
  for name in sa:
    assert sa[name].dtype == sb[name].dtype, name
    assert torch.equal(sa[name], sb[name]), name


@pytest.mark.parametrize('config', TORCH_CONFIGS, ids=lambda c: '-'.join(
    f'{k}={v}' for k, v in c.items()))
def test_torch_round_trip(config):
  module = torch_lstm(dropout=0.1 if config['num_layers'] > 1 else 0.0, **config)
  with torch.no_grad():  # one bias only: the round trip then reproduces every tensor
    for name, p in module.named_parameters():
      if name.startswith('bias_hh'):
        p.zero_()
  back = interop.to_torch(*interop.from_torch(module))
  assert_same_state(back, module)
  assert (back.num_layers, back.bidirectional, back.proj_size, back.bias, back.dropout,
          back.batch_first) == (module.num_layers, module.bidirectional, module.proj_size,
                                module.bias, module.dropout, True)


def test_torch_round_trip_sums_biases():
  module = torch_lstm(num_layers=2, bidirectional=True)
  back = interop.to_torch(*interop.from_torch(module))
  a, b = module.state_dict(), back.state_dict()
  for name in a:
    if name.startswith('weight'):
      assert torch.equal(a[name], b[name]), name
    elif name.startswith('bias_ih'):
      hh = name.replace('bias_ih', 'bias_hh')
      torch.testing.assert_close(b[name], a[name] + a[hh], rtol=0, atol=0)
      assert torch.count_nonzero(b[hh]) == 0
  x = inputs()
  for got, want in zip(run_torch(back, x, LENGTHS), run_torch(module, x, LENGTHS)):
    close(got, want)
  # A second trip changes nothing.
  assert_same_state(interop.to_torch(*interop.from_torch(back)), back)


@pytest.mark.parametrize('options', [
    dict(num_layers=1),
    dict(num_layers=3, bidirectional=True, proj_size=4),
    dict(num_layers=2, use_bias=False, dropout=0.5, activation=jnp.tanh,
         recurrent_activation=jax.nn.sigmoid),
    dict(num_layers=3, scan_layers=True, bidirectional=True),
    dict(cells=({'features': H}, {'features': H})),
], ids=['one', 'bidi-proj', 'nobias-callables', 'scanned', 'equal-cells'])
def test_to_torch_matches_model(options):
  model = StackedLSTM(hidden_size=H if 'cells' not in options else None, **options)
  x = inputs()
  variables = random_variables(model, seed=1)
  module = interop.to_torch(model, variables)
  assert module.batch_first and module.dropout == model.dropout
  out, h_n, c_n = run_torch(module, x, LENGTHS)
  y, carries = apply(model, variables, x, LENGTHS)
  close(y, out)
  h, c = torch_layout(carries, model.bidirectional)
  close(h, h_n)
  close(c, c_n)
  # Back again: the looped parameters, bit for bit.
  _, again = interop.from_torch(module)
  params = variables['params']
  if options.get('scan_layers'):
    assert 'layers' in params
    params = scanned_to_looped(params)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               again['params'], dict(params))


def test_to_torch_accepts_both_parameter_trees():
  looped = StackedLSTM(num_layers=3, hidden_size=H)
  scanned = StackedLSTM(num_layers=3, hidden_size=H, scan_layers=True)
  variables = random_variables(looped)
  as_scanned = {'params': looped_to_scanned(variables['params'])}
  reference = interop.to_torch(looped, variables)
  for model, v in [(scanned, as_scanned), (scanned, variables), (looped, as_scanned)]:
    assert_same_state(interop.to_torch(model, v), reference)


REFUSALS = [
    (dict(activation='relu'), "activation='relu'"),
    (dict(recurrent_activation='hard_sigmoid'), 'recurrent_activation'),
    (dict(activation=lambda x: jnp.tanh(x)), 'activation'),
    (dict(peephole=True), 'peephole'),
    (dict(layer_norm=True), 'layer_norm'),
    (dict(cell_clip=3.0), 'cell_clip'),
    (dict(proj_size=3, proj_clip=3.0), 'proj_clip'),
    (dict(between='tanh'), 'between'),
    (dict(between='layernorm'), 'between'),
    (dict(block='residual_op_on_skip'), 'block'),
    (dict(dropout=0.2, variational=True), 'variational'),
    (dict(reverse=True), 'reverse'),
    (dict(cells=({'features': H}, {'features': 4})),
     r'cells\[1\] has \(features, proj_size, use_bias\) = \(4, None, True\) and cells\[0\] '
     r'\(6, None, True\): torch.nn.LSTM has one size and bias for all layers'),
    (dict(cells=({'features': H}, {'features': H, 'proj_size': 3})), r'cells\[1\] has'),
    (dict(cells=({'features': H}, {'features': H, 'activation': 'relu'})),
     r"cells\[1\]\['activation'\]='relu': torch.nn.LSTM uses tanh"),
    (dict(cells=({'features': H}, {'features': H, 'peephole': True})),
     r"cells\[1\]\['peephole'\]=True: torch.nn.LSTM has no peephole"),
]


@pytest.mark.parametrize('options,message', REFUSALS,
                         ids=['-'.join(sorted(o)) for o, _ in REFUSALS])
def test_to_torch_refuses(options, message):
  if 'cells' not in options:
    options = dict(num_layers=2, hidden_size=H, **options)
  model = StackedLSTM(**options)
  variables = random_variables(model)
  with pytest.raises(ValueError, match=message):
    interop.to_torch(model, variables)


def test_to_torch_refuses_mismatched_variables():
  model = StackedLSTM(num_layers=2, hidden_size=H)
  with pytest.raises(ValueError, match=(
      r"^variables do not match the model: params/layer_0/forward holds \['bias', 'kernel', "
      r"'proj_kernel', 'recurrent_kernel'\], the model needs \['bias', 'kernel', "
      r"'recurrent_kernel'\]$")):
    interop.to_torch(model, random_variables(StackedLSTM(num_layers=2, hidden_size=H,
                                                         proj_size=3)))
  with pytest.raises(ValueError, match=r'^variables do not match the model: params/layer_1/forward '
                                       r'is missing \(the model has 2 layer\(s\), '
                                       r'bidirectional=False\)$'):
    interop.to_torch(model, random_variables(StackedLSTM(num_layers=1, hidden_size=H)))
  with pytest.raises(ValueError, match=(
      rf'^variables do not match the model: params/layer_0/forward/kernel has shape \({F}, 16\), '
      rf'the model needs \({F}, {4 * H}\) \(torch.nn.LSTM weight_ih_l0: \({4 * H}, {F}\)\)$')):
    interop.to_torch(model, random_variables(StackedLSTM(num_layers=2, hidden_size=4)))
  with pytest.raises(TypeError, match=r'^to_torch\(model, variables\): model must be a '
                                      r'StackedLSTM, got torch\.nn\.modules\.rnn\.LSTM$'):
    interop.to_torch(torch_lstm(), {})
  with pytest.raises(TypeError, match=r'^to_torch\(model, variables\): variables must be the '
                                      r"mapping model.init returns \({'params': \.\.\.}\), "
                                      r'got list$'):
    interop.to_torch(model, [])


def test_to_torch_names_a_shared_option_once():
  model = StackedLSTM(cells=({'features': H}, {'features': H}), peephole=True)
  with pytest.raises(ValueError) as info:
    interop.to_torch(model, random_variables(model))
  assert str(info.value) == ('torch.nn.LSTM cannot represent this StackedLSTM: peephole=True: '
                             'torch.nn.LSTM has no peephole')


# --------------------------------------------------------------------------------------- Keras


FAST_INIT = dict(kernel_initializer='zeros', recurrent_initializer='zeros')


def keras_stack(units, bidirectional=False, seed=0, **options):
  """Built Keras LSTM layers (return_sequences, return_state) with random weights."""
  rng = np.random.default_rng(seed)
  layers, width = [], F
  for u in units:
    # Weights are overwritten below: skip the (slow, eager) orthogonal initialiser.
    layer = keras.layers.LSTM(u, return_sequences=True, return_state=True, **FAST_INIT, **options)
    if bidirectional:
      layer = keras.layers.Bidirectional(layer)
    layer.build((None, T, width))
    for w in layer.weights:
      w.assign(rng.normal(scale=0.5, size=w.shape).astype(np.float32))
    layers.append(layer)
    width = u * (2 if bidirectional else 1)
  return layers


def run_keras(layers, x, training=False):
  y, states = x, []
  for layer in layers:
    y, *state = layer(y, training=training)
    states.append([np.asarray(s) for s in state])
  return np.asarray(y), states


KERAS_CASES = {
    'defaults': dict(units=(H, H)),
    'defaults-units': dict(units=(H, 4, 5)),
    'relu-hard_sigmoid': dict(units=(H, H), activation='relu',
                              recurrent_activation='hard_sigmoid'),
    'relu-hard_sigmoid-units': dict(units=(H, 4, 5), activation='relu',
                                    recurrent_activation='hard_sigmoid'),
    'nobias': dict(units=(H, 4), use_bias=False),
    'gelu-softsign': dict(units=(4,), activation='gelu', recurrent_activation='softsign'),
    'leaky_relu': dict(units=(H, H), activation='leaky_relu'),
    'swish-units': dict(units=(H, 3), activation='swish', recurrent_activation='hard_sigmoid'),
    'bidirectional': dict(units=(H, 4), bidirectional=True),
    'bidirectional-relu': dict(units=(H, H), bidirectional=True, activation='relu',
                               recurrent_activation='hard_sigmoid'),
}


@pytest.mark.parametrize('case', list(KERAS_CASES))
def test_matches_keras(case):
  options = dict(KERAS_CASES[case])
  units = options.pop('units')
  layers = keras_stack(units, **options)
  model, variables = interop.from_keras(layers)
  assert model.depth == len(units)
  assert (model.cells is None) == (len(set(units)) == 1)
  x = inputs()
  want, states = run_keras(layers, x)
  y, carries = apply(model, variables, x)
  close(y, want)
  for state, carry in zip(states, carries):
    flat = [a for hc in (carry if model.bidirectional else (carry,)) for a in hc]
    assert len(flat) == len(state)
    for got, expected in zip(flat, state):
      close(got, expected)


def test_from_keras_single_layer_and_sequential():
  layers = keras_stack((H,), activation='relu')
  model, variables = interop.from_keras(layers[0])
  x = inputs()
  close(apply(model, variables, x)[0], run_keras(layers, x)[0])
  sequential = keras.Sequential([keras.Input((T, F)),
                                 keras.layers.LSTM(H, return_sequences=True, **FAST_INIT),
                                 keras.layers.LSTM(4, return_sequences=True, **FAST_INIT)])
  for w, value in zip(sequential.weights, random_like(sequential.weights, seed=3)):
    w.assign(value)
  model, variables = interop.from_keras(sequential)
  close(apply(model, variables, x)[0], np.asarray(sequential(x)))


def built(layer, width=F, batch=None):
  layer.build((batch, T, width))
  return layer


@pytest.mark.parametrize('make,error,message', [
    (lambda: [built(keras.layers.GRU(H, **FAST_INIT))], TypeError,
     r'^layers\[0\]: from_keras needs keras.layers.LSTM layers .*, got GRU$'),
    (lambda: [built(keras.layers.Dense(H))], TypeError, r'^layers\[0\]: .*, got Dense$'),
    (lambda: [keras.layers.LSTM(H)], ValueError, r"^layers\[0\]: layer '.*' is not built"),
    (lambda: [built(keras.layers.LSTM(H, go_backwards=True))], ValueError,
     r'^layers\[0\]: go_backwards=True is not supported'),
    (lambda: [built(keras.layers.LSTM(H, stateful=True), batch=B)], ValueError,
     r'^layers\[0\]: stateful=True is not supported'),
    (lambda: [built(keras.layers.LSTM(H, activation=lambda x: x * 2))], ValueError,
     r'^layers\[0\]: activation=.* is not a built-in Keras activation'),
    (lambda: [built(keras.layers.LSTM(H, recurrent_activation='exponential'))], ValueError,
     r"^layers\[0\]: recurrent_activation='exponential' has no equivalent here"),
    (lambda: [built(keras.layers.LSTM(H)), built(keras.layers.LSTM(H), width=4)], ValueError,
     r'^layers\[1\] reads 4 features but layers\[0\] outputs 6: the layers do not form a stack$'),
    (lambda: [built(keras.layers.Bidirectional(keras.layers.LSTM(H, return_sequences=True))),
              built(keras.layers.LSTM(H), width=2 * H)], ValueError,
     r'^from_keras: either every layer is keras.layers.Bidirectional or none is'),
    (lambda: [built(keras.layers.Bidirectional(keras.layers.LSTM(H), merge_mode='sum'))],
     ValueError, r"^layers\[0\]: Bidirectional merge_mode='sum' is not supported; only 'concat'$"),
    (lambda: [keras.layers.Bidirectional(keras.layers.LSTM(H))], ValueError,
     r"^layers\[0\]: layer '.*' is not built; call it on an input or layer.build"),
    (lambda: [], ValueError,
     r'^from_keras\(layers\): layers is empty; give at least one built keras.layers.LSTM$'),
    (lambda: 5, TypeError, r'^from_keras\(layers\): layers must be a list of keras.layers.LSTM '
                           r'layers, one such layer or a keras.Sequential of them, got '
                           r'builtins.int$'),
], ids=['gru', 'dense', 'unbuilt', 'go_backwards', 'stateful', 'custom-activation',
        'exponential', 'widths', 'mixed-bidirectional', 'merge_mode', 'unbuilt-bidirectional',
        'empty', 'not-a-list'])
def test_from_keras_refuses(make, error, message):
  with pytest.raises(error, match=message):
    interop.from_keras(make())


def keras_cells(layers):
  """The Keras cells of `layers` in the order our cells run: per layer, forward then backward."""
  return [l.cell for layer in layers
          for l in ((layer.forward_layer, layer.backward_layer)
                    if isinstance(layer, keras.layers.Bidirectional) else (layer,))]


@pytest.mark.parametrize('bidirectional', [False, True], ids=['stack', 'bidirectional'])
def test_recurrent_dropout_matches_keras(bidirectional):
  """Carried by from_keras; the same in inference, and in training given the same masks (Keras'
  cells take the mask each of ours drew, for all four of their gates)."""
  layers = keras_stack((H, H), bidirectional=bidirectional, recurrent_dropout=0.4)
  model, variables = interop.from_keras(layers)
  assert model.recurrent_dropout == 0.4
  x = inputs()
  want, states = run_keras(layers, x)
  y, carries = apply(model, variables, x)
  close(y, want)
  close(jax.tree.leaves(carries), [a for state in states for a in state])
  (y, carries), noises = jax.jit(lambda v, x: apply_with_noise(
      model, v, x, deterministic=False, rngs={'dropout': jax.random.key(3)}))(variables, x)
  cells = keras_cells(layers)
  assert len(noises) == len(cells)
  for cell, noise in zip(cells, noises):
    mask = keras.ops.convert_to_tensor(np.asarray(noise.recurrent))
    cell.get_recurrent_dropout_mask = lambda h, mask=mask: [mask] * 4
  want_train, states_train = run_keras(layers, x, training=True)
  assert not np.allclose(want_train, want, atol=1e-3)
  close(y, want_train)
  close(jax.tree.leaves(carries), [a for state in states_train for a in state])


def test_from_keras_warns_only_about_input_dropout():
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    model, _ = interop.from_keras([built(keras.layers.LSTM(H, recurrent_dropout=0.3))])
  assert model.recurrent_dropout == 0.3


def test_from_keras_warns_about_dropout():
  with pytest.warns(UserWarning, match='dropout'):
    interop.from_keras([built(keras.layers.LSTM(H, dropout=0.2, recurrent_dropout=0.1))])


# ---------------------------------------------------------------------------------------- Flax


def flax_rnn_params(in_features, seed):
  """nn.RNN(nn.OptimizedLSTMCell(H)) and params with its init's structure, random values."""
  rnn = nn.RNN(nn.OptimizedLSTMCell(H), return_carry=True)
  shapes = jax.eval_shape(rnn.init, jax.random.key(seed), jnp.zeros((B, T, in_features)))
  return rnn, random_like(shapes, seed + 100, scale=0.5)


def ours_from_flax(cell_params):
  """Our cell params from Flax's per-gate Dense params (i, f, g, o)."""
  gates = 'ifgo'
  return {'kernel': jnp.concatenate([cell_params['i' + g]['kernel'] for g in gates], axis=1),
          'recurrent_kernel': jnp.concatenate([cell_params['h' + g]['kernel'] for g in gates],
                                              axis=1),
          'bias': jnp.concatenate([cell_params['h' + g]['bias'] for g in gates])}


@pytest.mark.parametrize('padded', [False, True], ids=['full', 'padded'])
@pytest.mark.parametrize('num_layers', [1, 2])
def test_matches_flax(num_layers, padded):
  x = jnp.asarray(inputs())
  lengths = jnp.asarray(LENGTHS) if padded else None
  y, params, flax_carries = x, {}, []
  for k in range(num_layers):
    rnn, p = flax_rnn_params(y.shape[-1], seed=k)
    carry, y = jax.jit(rnn.apply)(p, y, seq_lengths=lengths)  # (c, h)
    flax_carries.append(carry)
    params[f'layer_{k}'] = {'forward': ours_from_flax(p['params']['cell'])}
  model = StackedLSTM(num_layers=num_layers, hidden_size=H)
  ours, carries = apply(model, {'params': params}, x, lengths)
  if padded:  # Flax leaves padded outputs unzeroed: compare valid steps only
    valid = np.arange(T)[None, :] < LENGTHS[:, None]
    close(np.asarray(ours)[valid], np.asarray(y)[valid])
  else:
    close(ours, y)
  for (h, c), (fc, fh) in zip(carries, flax_carries):
    close(h, fh)
    close(c, fc)


def test_matches_flax_bidirectional_padded():
  x = jnp.asarray(inputs())
  lengths = jnp.asarray(LENGTHS)
  fwd, p_fwd = flax_rnn_params(F, seed=0)
  _, p_bwd = flax_rnn_params(F, seed=1)
  bidi = nn.Bidirectional(fwd, nn.RNN(nn.OptimizedLSTMCell(H), return_carry=True, reverse=True,
                                      keep_order=True), return_carry=True)
  flax_params = {'params': {'forward_rnn': p_fwd['params'], 'backward_rnn': p_bwd['params']}}
  (carry_f, carry_b), y = jax.jit(bidi.apply)(flax_params, x, seq_lengths=lengths)
  params = {'layer_0': {'forward': ours_from_flax(p_fwd['params']['cell']),
                        'backward': ours_from_flax(p_bwd['params']['cell'])}}
  model = StackedLSTM(num_layers=1, hidden_size=H, bidirectional=True)
  ours, (((h_f, c_f), (h_b, c_b)),) = apply(model, {'params': params}, x, lengths)
  valid = np.arange(T)[None, :] < LENGTHS[:, None]
  close(np.asarray(ours)[valid], np.asarray(y)[valid])
  close(h_f, carry_f[1])
  close(c_f, carry_f[0])
  close(h_b, carry_b[1])
  close(c_b, carry_b[0])


CELL_OPTION_REFUSALS = [
    (dict(recurrent_dropout=0.2), 'recurrent_dropout=0.2: torch.nn.LSTM has no recurrent_dropout'),
    (dict(zoneout_cell=0.1), 'zoneout_cell'),
    (dict(zoneout_hidden=0.1), 'zoneout_hidden'),
    (dict(weight_drop=0.5), 'weight_drop'),
    (dict(input_gate=False), 'input_gate=False'),
    (dict(forget_gate=False), 'forget_gate=False'),
    (dict(output_gate=False), 'output_gate=False'),
    (dict(coupled_gates=True), 'coupled_gates=True'),
    (dict(candidate_activation='linear'), "candidate_activation='linear'"),
    (dict(output_activation='relu'), "output_activation='relu'"),
    (dict(activation='relu', candidate_activation='tanh'), "activation='relu'"),
]


@pytest.mark.parametrize('options,message', CELL_OPTION_REFUSALS,
                         ids=['-'.join(sorted(o)) for o, _ in CELL_OPTION_REFUSALS])
def test_to_torch_refuses_cell_options_in_one_line(options, message):
  model = StackedLSTM(num_layers=2, hidden_size=H, **options)
  with pytest.raises(ValueError, match=message) as info:
    interop.to_torch(model, random_variables(model))
  assert '\n' not in str(info.value)


def test_to_torch_ignores_an_activation_that_serves_no_gate():
  model = StackedLSTM(num_layers=2, hidden_size=H, activation='relu', candidate_activation='tanh',
                      output_activation='tanh')
  variables = random_variables(model)
  x = inputs()
  out, _, _ = run_torch(interop.to_torch(model, variables), x, LENGTHS)
  close(apply(model, variables, x, LENGTHS)[0], out)
