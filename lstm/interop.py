"""Weight interop: `StackedLSTM` to and from `torch.nn.LSTM` and Keras 3 `LSTM` layers.

`from_torch(module)` and `from_keras(layers)` return `(model, variables)`: a `StackedLSTM` with the
same options and its float32 parameters, so `model.apply(variables, x)` computes what the source
computes. `to_torch(model, variables)` goes the other way and refuses, with a ValueError naming the
option, whatever `torch.nn.LSTM` cannot represent.

Layouts: PyTorch keeps (4H, in) row blocks and two biases,
we keep (in, 4H) column blocks and one bias, both in gate order i, f, g, o; Keras' layout and gate
order are ours, so its arrays copy straight.

Our models are batch-major, (batch, time, features). A module's `batch_first` only says how that
module lays out its input; it is not an option of the computation, so `from_torch` accepts either
value and `to_torch` always returns a module with `batch_first=True`, which reads the same arrays
as our model. Training-time options are carried where they have an equivalent (PyTorch `dropout`
-> `dropout`, Keras `recurrent_dropout` -> `recurrent_dropout`); initialisers and Keras' input
`dropout` are not (a warning says so).

torch and keras are imported inside the functions: the library does not depend on them.
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from lstm import activations
from lstm.cell import DEFAULTS as CELL_DEFAULTS, OPTIONS, in_effect as cell_in_effect
from lstm.stack import StackedLSTM, scanned_to_looped

__all__ = ['from_torch', 'to_torch', 'from_keras']


def _f32(a) -> jax.Array:
  return jnp.asarray(np.asarray(a, dtype=np.float32))


# ------------------------------------------------------------------------------------- PyTorch


def _torch_numpy(t) -> np.ndarray:
  return t.detach().to(device='cpu').float().numpy()


def _type_name(value) -> str:
  return f'{type(value).__module__}.{type(value).__name__}'


def _torch_shapes(module) -> dict[str, tuple[int, ...]]:
  """The shape of every weight of a `torch.nn.LSTM` with `module`'s options, by name."""
  hidden, proj = module.hidden_size, module.proj_size
  out = proj or hidden
  directions = 2 if module.bidirectional else 1
  shapes = {}
  for k in range(module.num_layers):
    for suffix in ['', '_reverse'][:directions]:
      tag = f'_l{k}{suffix}'
      shapes['weight_ih' + tag] = (4 * hidden, module.input_size if k == 0 else out * directions)
      shapes['weight_hh' + tag] = (4 * hidden, out)
      shapes['bias_ih' + tag] = shapes['bias_hh' + tag] = (4 * hidden,)
      shapes['weight_hr' + tag] = (proj, hidden)
  return shapes


def from_torch(module) -> tuple[StackedLSTM, dict[str, Any]]:
  """A `StackedLSTM` and its variables computing what `torch.nn.LSTM` `module` computes.

  kernel = weight_ih.T, recurrent_kernel = weight_hh.T, bias = bias_ih + bias_hh,
  proj_kernel = weight_hr.T; the `_reverse` parameters become the `backward` direction. `dropout`
  is carried over (PyTorch and `StackedLSTM` both drop every layer's output but the last).
  `batch_first` is ignored: it only concerns the module's input layout, and ours is batch-major.
  Parameters are converted to float32 whatever the module's dtype.

  Weights under `torch.nn.utils.prune` or a parametrisation are read as the module uses them.
  Raises TypeError when `module` is not a `torch.nn.LSTM`, and ValueError naming the weight
  (`weight_hh_l0`, ...) when one that its options call for is missing or has another shape.
  """
  import torch

  if not isinstance(module, torch.nn.LSTM):
    raise TypeError(f'from_torch(module): module must be a torch.nn.LSTM, got '
                    f'{_type_name(module)}')
  if getattr(module, 'mode', 'LSTM') != 'LSTM':
    raise ValueError(f"from_torch(module): module.mode must be 'LSTM', got {module.mode!r}")
  hidden, proj = module.hidden_size, module.proj_size
  bias, layers = module.bias, module.num_layers
  suffixes = [('forward', '')] + ([('backward', '_reverse')] if module.bidirectional else [])
  options = (f'torch.nn.LSTM(input_size={module.input_size}, hidden_size={hidden}, num_layers='
             f'{layers}, bidirectional={module.bidirectional}, bias={bias}, proj_size={proj})')
  shapes = _torch_shapes(module)

  def get(name):
    # getattr, not named_parameters: pruned or parametrised weights are read as they are used.
    value = getattr(module, name, None)
    if not isinstance(value, torch.Tensor):
      raise ValueError(f'from_torch(module): module.{name} is missing (got '
                       f'{type(value).__name__}); {options} has that tensor')
    needed = shapes[name]
    if tuple(value.shape) != needed:
      raise ValueError(f'from_torch(module): module.{name} has shape {tuple(value.shape)}; '
                       f'{options} needs {needed}')
    return _torch_numpy(value)

  out: dict[str, Any] = {}
  for k in range(layers):
    layer = {}
    for direction, suffix in suffixes:
      tag = f'_l{k}{suffix}'
      cell = {'kernel': _f32(get('weight_ih' + tag).T),
              'recurrent_kernel': _f32(get('weight_hh' + tag).T)}
      if bias:
        cell['bias'] = _f32(get('bias_ih' + tag) + get('bias_hh' + tag))
      if proj > 0:
        cell['proj_kernel'] = _f32(get('weight_hr' + tag).T)
      layer[direction] = cell
    out[f'layer_{k}'] = layer
  model = StackedLSTM(num_layers=layers, hidden_size=hidden, bidirectional=module.bidirectional,
                      dropout=float(module.dropout), use_bias=bool(bias),
                      proj_size=proj if proj > 0 else None)
  return model, {'params': out}


# Options torch.nn.LSTM carries (sizes, bias, initialisers, dtypes, layer count, dropout, and what
# does not change the function); every other option is refused at any value but its declared
# default, so an option added to the library is refused here until it is carried.
_TORCH_CARRIED = ('features', 'proj_size', 'use_bias', 'forget_bias', 'kernel_init',
                  'recurrent_kernel_init', 'bias_init', 'dtype', 'param_dtype', 'num_layers',
                  'hidden_size', 'cells', 'bidirectional', 'dropout', 'scan_layers', 'remat')
_ACTIVATIONS = ('activation', 'recurrent_activation', 'candidate_activation', 'output_activation')
_TORCH_REASONS = {
    'peephole': 'has no peephole', 'layer_norm': 'has no layer_norm',
    'layer_norm_epsilon': 'has no layer_norm', 'cell_clip': 'does not clip',
    'proj_clip': 'does not clip', 'input_gate': 'always has that gate',
    'forget_gate': 'always has that gate', 'output_gate': 'always has that gate',
    'coupled_gates': 'has separate input and forget gates',
    'between': 'feeds h straight up', 'block': 'stacks plain layers (h straight up)',
    'ffn_factor': 'has no feed-forward sublayer',
    'variational': 'dropout draws a new mask at every step',
    'reverse': 'runs its forward direction forwards'}


def _torch_refusals(model: StackedLSTM) -> list[str]:
  """Options of `model` that torch.nn.LSTM cannot represent, each as a short message naming the
  option as the model was given it (`peephole`, or `cells[1]['peephole']` for one layer's)."""
  problems = []

  def refuse(layer: int, option: str, value, reason: str) -> None:
    problem = f'{model.option_name(layer, option)}={value!r}: torch.nn.LSTM {reason}'
    if problem not in problems:  # a stack-level option is every layer's
      problems.append(problem)

  configs = [model.cell_config(i) for i in range(model.depth)]
  for i, config in enumerate(configs):
    used = [o for o in ('candidate_activation', 'output_activation') if config[o] is not None]
    if len(used) < 2:  # `activation` serves the other one
      used.insert(0, 'activation')
    for option in used:
      if activations.name_of(config[option]) != 'tanh':
        refuse(i, option, config[option], 'uses tanh')
    if activations.name_of(config['recurrent_activation']) != 'sigmoid':
      refuse(i, 'recurrent_activation', config['recurrent_activation'], 'uses sigmoid')
    for option in OPTIONS:
      if (option in _TORCH_CARRIED or option in _ACTIVATIONS or not cell_in_effect(config, option)
          or config[option] == CELL_DEFAULTS[option]):
        continue
      refuse(i, option, config[option], _TORCH_REASONS.get(option, f'has no {option}'))
  shape = lambda c: (c['features'], c['proj_size'], c['use_bias'])
  differ = [i for i, c in enumerate(configs) if shape(c) != shape(configs[0])]
  if differ:
    problems.append(f'cells[{differ[0]}] has (features, proj_size, use_bias) = '
                    f'{shape(configs[differ[0]])} and cells[0] {shape(configs[0])}: '
                    'torch.nn.LSTM has one size and bias for all layers')
  for option, value in model.deviations().items():
    if option not in _TORCH_CARRIED:
      problems.append(f'{option}={value!r}: torch.nn.LSTM '
                      + _TORCH_REASONS.get(option, f'has no {option}'))
  return problems


def _looped_params(model: StackedLSTM, variables) -> dict[str, Any]:
  """`variables`' parameters as the looped parameter tree, checked to hold every array `model` needs
  (ValueError naming the first one missing or extra, as params/layer_k/direction)."""
  if not isinstance(variables, Mapping):
    raise TypeError('to_torch(model, variables): variables must be the mapping model.init '
                    f"returns ({{'params': ...}}), got {type(variables).__name__}")
  params = scanned_to_looped(dict(variables['params'] if 'params' in variables else variables))
  config = model.cell_config(0)
  wanted = {'kernel', 'recurrent_kernel'} | ({'bias'} if config['use_bias'] else set()) \
      | ({'proj_kernel'} if config['proj_size'] else set())
  for k in range(model.depth):
    for direction in ['forward'] + (['backward'] if model.bidirectional else []):
      cell = params.get(f'layer_{k}', {}).get(direction)
      if cell is None:
        raise ValueError(f'variables do not match the model: params/layer_{k}/{direction} is '
                         f'missing (the model has {model.depth} layer(s), bidirectional='
                         f'{model.bidirectional})')
      if set(cell) != wanted:
        raise ValueError(f'variables do not match the model: params/layer_{k}/{direction} holds '
                         f'{sorted(cell)}, the model needs {sorted(wanted)}')
  return params


def to_torch(model: StackedLSTM, variables: Mapping[str, Any]):
  """A `torch.nn.LSTM` (batch_first=True, float32) computing what `model` computes.

  bias_ih = bias and bias_hh = 0. Parameters of a `scan_layers=True` model are converted with
  `scanned_to_looped` first (both parameter trees are accepted). Raises ValueError naming every
  option that torch.nn.LSTM cannot represent: activation (or candidate/output activation) other than tanh,
  recurrent_activation other than sigmoid, peephole, layer_norm, cell_clip, proj_clip, a gate
  variant (input_gate, forget_gate or output_gate False, coupled_gates), recurrent_dropout,
  zoneout, weight_drop, between other than 'none', a block other than 'plain' (and any other
  option away from its default that torch.nn.LSTM does not carry), variational dropout, reverse, and
  per-layer cells that differ in size or bias (a per-layer option is named as given, e.g.
  `cells[1]['peephole']`); and naming the array (`params/layer_0/forward/kernel`) when `variables`
  do not fit `model`. TypeError when `model` is not a StackedLSTM or `variables` not a mapping.
  Initialisers, forget_bias and remat do not change the function
  and are not carried; a `dtype`/`param_dtype` other than float32 is not carried either (the
  module is float32). The module is in training mode, as every new torch module: call `.eval()`
  to run it without dropout.
  """
  import torch

  if not isinstance(model, StackedLSTM):
    raise TypeError('to_torch(model, variables): model must be a StackedLSTM, got '
                    f'{_type_name(model)}')
  problems = _torch_refusals(model)
  if problems:
    raise ValueError('torch.nn.LSTM cannot represent this StackedLSTM: ' + '; '.join(problems))
  params = _looped_params(model, variables)
  config = model.cell_config(0)
  hidden, proj, bias = config['features'], config['proj_size'] or 0, config['use_bias']
  names = ['forward'] + (['backward'] if model.bidirectional else [])
  input_size = int(np.shape(params['layer_0']['forward']['kernel'])[0])
  module = torch.nn.LSTM(input_size, hidden, num_layers=model.depth, bias=bias, batch_first=True,
                         dropout=float(model.dropout), bidirectional=model.bidirectional,
                         proj_size=proj, dtype=torch.float32)
  state, sources = {}, {}
  tensor = lambda a: torch.from_numpy(np.array(a, dtype=np.float32))
  ours = {'weight_ih': 'kernel', 'weight_hh': 'recurrent_kernel'}  # torch's name: ours
  ours.update({'bias_ih': 'bias'} if bias else {})
  ours.update({'weight_hr': 'proj_kernel'} if proj else {})
  for k in range(model.depth):
    for direction in names:
      cell = params[f'layer_{k}'][direction]
      tag = f'_l{k}' + ('_reverse' if direction == 'backward' else '')
      for theirs, name in ours.items():
        sources[theirs + tag] = f'params/layer_{k}/{direction}/{name}'
        state[theirs + tag] = tensor(np.asarray(cell[name]).T)
      if bias:
        state['bias_hh' + tag] = torch.zeros(4 * hidden, dtype=torch.float32)
  expected = module.state_dict()
  for name, source in sources.items():
    needed = tuple(expected[name].shape)
    if tuple(state[name].shape) != needed:
      raise ValueError(f'variables do not match the model: {source} has shape '
                       f'{tuple(state[name].shape)[::-1]}, the model needs {needed[::-1]} '
                       f'(torch.nn.LSTM {name}: {needed})')
  module.load_state_dict(state, strict=True)
  return module


# --------------------------------------------------------------------------------------- Keras


def _keras_activation(fn, option: str, where: str):
  """Our activation (registry name or callable) equal to Keras activation `fn`."""
  import keras

  # Keras' built-ins are plain functions registered under their __name__ ('swish' is silu).
  name = getattr(fn, '__name__', None)
  builtin = None
  if isinstance(name, str) and not name.startswith('<'):
    try:
      builtin = keras.activations.get(name)
    except (ValueError, TypeError):
      builtin = None
  if builtin is not fn:
    raise ValueError(f'{where}: {option}={fn!r} is not a built-in Keras activation; from_keras '
                     'maps only those (known to us: ' + ', '.join(activations.names()) + ')')
  if name not in activations.REGISTRY:
    raise ValueError(f'{where}: {option}={name!r} has no equivalent here; known activations: '
                     + ', '.join(activations.names()))
  return name


def _keras_cell(layer, where: str, backward: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
  """(cell config, params) of one built keras.layers.LSTM; runs forwards unless `backward`."""
  import keras

  if not isinstance(layer, keras.layers.LSTM):
    raise TypeError(f'{where}: from_keras needs keras.layers.LSTM layers (or Bidirectional '
                    f'wrappers of them), got {type(layer).__name__}')
  if not layer.built:
    raise ValueError(f'{where}: layer {layer.name!r} is not built; call it on an input or '
                     'layer.build(input_shape) first')
  if layer.stateful:
    raise ValueError(f'{where}: stateful=True is not supported (pass the state as initial_carry)')
  if layer.go_backwards != backward:
    raise ValueError(f'{where}: go_backwards={layer.go_backwards} is not supported (Keras '
                     'returns the outputs reversed); use keras.layers.Bidirectional or '
                     'StackedLSTM(reverse=True)')
  if getattr(layer, 'dropout', 0):
    warnings.warn(f'{where}: Keras dropout={layer.dropout} (on the inputs) is a training-time '
                  'option and is not carried over', stacklevel=3)
  cell = layer.cell
  config = {'features': int(cell.units),
            'activation': _keras_activation(cell.activation, 'activation', where),
            'recurrent_activation': _keras_activation(cell.recurrent_activation,
                                                      'recurrent_activation', where),
            'use_bias': bool(cell.use_bias),
            'recurrent_dropout': float(cell.recurrent_dropout)}
  # `.value` is the backend array; np.array on a keras Variable warns under numpy 2.
  array = lambda v: _f32(keras.ops.convert_to_numpy(v.value))
  params = {'kernel': array(cell.kernel), 'recurrent_kernel': array(cell.recurrent_kernel)}
  if cell.use_bias:
    params['bias'] = array(cell.bias)
  return config, params


def from_keras(layers) -> tuple[StackedLSTM, dict[str, Any]]:
  """A `StackedLSTM` and its variables computing what a stack of Keras 3 LSTM layers computes.

  `layers`: built `keras.layers.LSTM` layers, first to last (or one layer, or a `keras.Sequential`
  of them), or `keras.layers.Bidirectional(LSTM)` wrappers with merge_mode='concat' (all or none).
  Keras' kernel (in, 4u), recurrent_kernel (u, 4u) and bias (4u,) have our layout and gate order,
  so they are copied. `activation` and `recurrent_activation` map to our activations by name;
  Keras' `hard_sigmoid` is Keras 3's relu6(x + 3) / 6, which is ours. Layers with different units
  or activations become per-layer `cells`. The last layer's `return_sequences`/`return_state` do
  not matter: our model returns both.

  Raises TypeError for a layer that is not a (Bidirectional) keras.layers.LSTM, and ValueError
  for an unbuilt layer, stateful=True, go_backwards=True, an activation without an equivalent,
  or layers whose widths do not chain. `recurrent_dropout` is carried; Keras 3 draws a separate
  mask for each gate where ours is shared by the four gates (see `LSTMCell`), so inference is the
  same and training is the same given the same mask for every gate. Keras' input `dropout` is
  not carried (a warning says so).
  """
  import keras

  if isinstance(layers, keras.Model):
    layers = list(layers.layers)
  elif isinstance(layers, keras.layers.Layer):
    layers = [layers]
  else:
    try:
      layers = list(layers)
    except TypeError:
      raise TypeError('from_keras(layers): layers must be a list of keras.layers.LSTM layers, '
                      f'one such layer or a keras.Sequential of them, got {_type_name(layers)}'
                      ) from None
  if not layers:
    raise ValueError('from_keras(layers): layers is empty; give at least one built '
                     'keras.layers.LSTM')
  bidi = [isinstance(l, keras.layers.Bidirectional) for l in layers]
  if any(bidi) and not all(bidi):
    raise ValueError('from_keras: either every layer is keras.layers.Bidirectional or none is; '
                     f'got {[type(l).__name__ for l in layers]}')
  bidirectional = all(bidi)
  configs, params = [], {}
  for k, layer in enumerate(layers):
    where = f'layers[{k}]'
    if bidirectional:
      if layer.merge_mode != 'concat':
        raise ValueError(f'{where}: Bidirectional merge_mode={layer.merge_mode!r} is not '
                         "supported; only 'concat'")
      if not layer.built:
        raise ValueError(f'{where}: layer {layer.name!r} is not built; call it on an input or '
                         'layer.build(input_shape) first')
      fwd, bwd = layer.forward_layer, layer.backward_layer
      config, p_fwd = _keras_cell(fwd, where + '.forward_layer')
      bwd_config, p_bwd = _keras_cell(bwd, where + '.backward_layer', backward=True)
      if bwd_config != config:
        raise ValueError(f'{where}: the forward and backward layers differ ({config} vs '
                         f'{bwd_config}); StackedLSTM uses one cell config per layer')
      params[f'layer_{k}'] = {'forward': p_fwd, 'backward': p_bwd}
    else:
      config, p = _keras_cell(layer, where)
      params[f'layer_{k}'] = {'forward': p}
    configs.append(config)
  widths = [c['features'] * (2 if bidirectional else 1) for c in configs]
  for k in range(1, len(configs)):
    got = int(params[f'layer_{k}']['forward']['kernel'].shape[0])
    if got != widths[k - 1]:
      raise ValueError(f'layers[{k}] reads {got} features but layers[{k - 1}] outputs '
                       f'{widths[k - 1]}: the layers do not form a stack')
  first = configs[0]
  if all(c == first for c in configs):
    shared = {k: v for k, v in first.items() if k != 'features'}
    model = StackedLSTM(num_layers=len(configs), hidden_size=first['features'],
                        bidirectional=bidirectional, **shared)
  else:
    model = StackedLSTM(num_layers=len(configs), cells=tuple(configs),
                        bidirectional=bidirectional)
  return model, {'params': params}

