"""The blocks between layers against hand-written Flax versions of their equations, and the
one-declaration rule: every option is declared once and reaches the trainer, the fast path's
allow-list, interop and export from that declaration."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from lstm import LSTMCell, LSTMLayer, StackedLSTM, fast, interop, scanned_to_looped
from lstm.cell import DEFAULTS, OPTIONS, in_effect
from lstm.stack import BLOCKS
from train import export, models

B, T, F, H = 3, 6, 5, 16
BLOCK_CASES = [(block, ffn, gated) for block in BLOCKS for ffn, gated in ((0, False), (2, False))]
BLOCK_CASES += [('prenorm', 4 / 3, True), ('postnorm', 1.5, True)]


def _x(seed=0):
  return jax.random.normal(jax.random.key(seed), (B, T, F))


def _lstm(p, x):
  return LSTMLayer(LSTMCell(H)).apply({'params': {'cell': p}}, x)[0]


def _norm(kind, p, x):
  return (nn.LayerNorm() if kind == 'layernorm' else nn.RMSNorm()).apply({'params': p}, x)


def _dense(p, x):
  return x @ p['kernel'] + p['bias']


def _ffn(p, u, gated, act=lambda v: jax.nn.gelu(v, approximate=False)):
  inner = act(_dense(p['gate'], u)) * _dense(p['up'], u) if gated else act(_dense(p['up'], u))
  return _dense(p['down'], inner)


def _by_hand(params, x, block, norm, ffn, gated, op):
  """The stack's equations (lstm/stack.py's docstring), written out layer by layer."""
  y = _lstm(params['layer_0']['forward'], x)
  k = 1
  while f'layer_{k}' in params:
    p = params[f'layer_{k}']
    if block == 'prenorm':
      u = op(_norm(norm, p['norm'], y))
    else:
      u = op(y)
    out = _lstm(p['forward'], u)
    z = {'plain': out, 'residual': y + out, 'residual_op_on_skip': u + out, 'prenorm': y + out,
         'postnorm': None}[block]
    if block == 'postnorm':
      z = _norm(norm, p['norm'], y + out)
    if ffn:
      if block == 'plain':
        z = _ffn(p['ffn'], z, gated)
      elif block in ('residual', 'residual_op_on_skip'):
        z = z + _ffn(p['ffn'], z, gated)
      elif block == 'prenorm':
        z = z + _ffn(p['ffn'], _norm(norm, p['ffn_norm'], z), gated)
      else:
        z = _norm(norm, p['ffn_norm'], z + _ffn(p['ffn'], z, gated))
    y = z
    k += 1
  if block == 'prenorm':
    y = _norm(norm, params['final_norm'], y)
  return y


@pytest.mark.slow  # every block form, looped and scanned, against its equations
@pytest.mark.parametrize('scan', [False, True], ids=['looped', 'scanned'])
@pytest.mark.parametrize('block,ffn,gated', BLOCK_CASES)
def test_block_equals_its_equations(block, ffn, gated, scan):
  norm = 'rmsnorm' if gated else 'layernorm'
  model = StackedLSTM(num_layers=3, hidden_size=H, block=block, norm=norm, ffn_factor=ffn,
                      ffn_gated=gated, between='tanh', scan_layers=scan)
  x = _x()
  params = model.init(jax.random.key(1), x)['params']
  weights = jax.random.normal(jax.random.key(2), (B, T, H))

  def loss_model(params, x):
    return jnp.sum(model.apply({'params': params}, x)[0] * weights)

  def loss_hand(params, x):
    looped = scanned_to_looped(params) if scan else params
    return jnp.sum(_by_hand(looped, x, block, norm, ffn, gated, jnp.tanh) * weights)

  y = model.apply({'params': params}, x)[0]
  looped = scanned_to_looped(params) if scan else params
  np.testing.assert_allclose(y, _by_hand(looped, x, block, norm, ffn, gated, jnp.tanh),
                             rtol=1e-5, atol=1e-5)
  g_model = jax.grad(loss_model, argnums=(0, 1))(params, x)
  g_hand = jax.grad(loss_hand, argnums=(0, 1))(params, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g_model,
               g_hand)


def test_op_on_skip_is_the_old_residual_bit_for_bit():
  """block='residual_op_on_skip' computes u + LSTM(u), u = op(y): what residual=True did."""
  model = StackedLSTM(num_layers=2, hidden_size=H, between='layernorm',
                      block='residual_op_on_skip')
  x = _x()
  params = model.init(jax.random.key(0), x)['params']
  y1 = _lstm(params['layer_0']['forward'], x)
  u = nn.LayerNorm().apply({'params': params['layer_1']['between']}, y1)
  expected = _lstm(params['layer_1']['forward'], u) + u
  np.testing.assert_array_equal(model.apply({'params': params}, x)[0], expected)


def test_blocks_share_the_lstm_parameters_of_a_seed():
  """Paired arms: with one key, every block form starts from the same LSTM weights."""
  x = _x()
  lstm_params = lambda block: jax.tree.map(
      np.asarray, {k: v['forward'] for k, v in StackedLSTM(
          num_layers=3, hidden_size=H, block=block).init(jax.random.key(5), x)['params'].items()
          if k.startswith('layer_')})
  plain = lstm_params('plain')
  for block in BLOCKS[1:]:
    jax.tree.map(np.testing.assert_array_equal, lstm_params(block), plain)


@pytest.mark.parametrize('kwargs,message', [
    (dict(block='pre_norm'), r"^block='pre_norm' is not known; use one of: plain, residual"),
    (dict(block='prenorm', norm='batchnorm'), r"^norm='batchnorm' is not a known norm"),
    (dict(ffn_factor=-1.0), r'^ffn_factor must be a number >= 0'),
    (dict(ffn_factor=2.0, ffn_activation='rleu'), r"^ffn_activation='rleu' is not a known"),
    (dict(between='rmsnorn'), r"^between='rmsnorn' is not known"),
])
def test_bad_block_options_are_one_line(kwargs, message):
  with pytest.raises(ValueError, match=message):
    StackedLSTM(num_layers=2, hidden_size=4, **kwargs)


# ------------------------------------------------------------------------------------------------
# One declaration per option

# A value other than the default for every option; a new option fails these tests until it has one.
NON_DEFAULT = {
    'activation': 'relu', 'recurrent_activation': 'hard_sigmoid', 'use_bias': False,
    'forget_bias': 0.0, 'peephole': True, 'proj_size': 8, 'cell_clip': 3.0, 'proj_clip': 3.0,
    'layer_norm': True, 'layer_norm_epsilon': 1e-3, 'candidate_activation': 'linear',
    'output_activation': 'linear', 'input_gate': False, 'forget_gate': False,
    'output_gate': False, 'coupled_gates': True, 'recurrent_dropout': 0.1, 'zoneout_cell': 0.1,
    'zoneout_hidden': 0.1, 'weight_drop': 0.1, 'kernel_init': nn.initializers.lecun_normal(),
    'recurrent_kernel_init': nn.initializers.lecun_normal(),
    'bias_init': nn.initializers.ones_init(), 'dtype': jnp.float32,
    'param_dtype': jnp.bfloat16,
    'num_layers': 3, 'hidden_size': 8, 'cells': ({'features': H}, {'features': H}),
    'bidirectional': True, 'reverse': True, 'between': 'relu', 'block': 'residual',
    'norm': 'rmsnorm', 'ffn_factor': 2.0, 'ffn_activation': 'relu', 'ffn_gated': True,
    'dropout': 0.1, 'variational': True, 'scan_layers': True, 'remat': True,
}
# What an option needs beside it to be in effect.
WITH = {'proj_clip': {'proj_size': 8}, 'layer_norm_epsilon': {'layer_norm': True},
        'norm': {'block': 'prenorm'}, 'ffn_activation': {'ffn_factor': 2.0},
        'ffn_gated': {'ffn_factor': 2.0}, 'variational': {'dropout': 0.1},
        'param_dtype': {'recurrent_kernel_init': nn.initializers.lecun_normal(),
                        'dtype': jnp.bfloat16}}


def test_every_option_has_a_test_value():
  options = set(OPTIONS) | set(StackedLSTM.stack_options())
  assert options == set(NON_DEFAULT)


def test_every_stack_option_is_a_config_field_with_the_same_default():
  model_config = common.base_config().model
  fields = {f.name: f.default for f in dataclasses.fields(StackedLSTM)}
  for name in set(fields) - set(models.NOT_IN_CONFIG) - {'parent', 'name'}:
    assert name in model_config, f'StackedLSTM.{name} is not declared in configs/common.py'
    if name not in ('num_layers', 'hidden_size'):  # the default run's sizes are the trainer's
      assert model_config[name] == fields[name], name
  assert set(models.STACK_FIELDS) == set(fields) - set(models.NOT_IN_CONFIG) - {'parent', 'name'}


def test_cell_options_are_declared_once():
  cell_fields = {f.name: f.default for f in dataclasses.fields(LSTMCell)}
  stack_fields = {f.name: f.default for f in dataclasses.fields(StackedLSTM)}
  for name in OPTIONS:
    assert cell_fields[name] is DEFAULTS[name] and stack_fields[name] is DEFAULTS[name], name


@pytest.mark.parametrize('option', sorted(OPTIONS))
def test_fast_path_is_an_allow_list(option, fast_calls):
  """An option takes the fast path only when the path handles it or it is not in effect."""
  kwargs = {option: NON_DEFAULT[option], **WITH.get(option, {})}
  cell = LSTMCell(H, **kwargs)
  x = _x().astype(cell.dtype or jnp.float32)
  layer = LSTMLayer(cell)
  variables = layer.init(jax.random.key(0), x)
  jax.jit(lambda v, x: layer.apply(v, x, deterministic=False,
                                   rngs={'dropout': jax.random.key(1)}))(variables, x)
  options = {**DEFAULTS, **kwargs}
  expected = all(o in fast.HANDLED or not in_effect(options, o) or options[o] == DEFAULTS[o]
                 for o in OPTIONS)
  assert bool(fast_calls) == expected, (option, fast_calls)


@pytest.mark.parametrize('option', sorted(set(OPTIONS) | set(StackedLSTM.stack_options())))
def test_torch_interop_refuses_what_it_does_not_carry(option):
  kwargs = {option: NON_DEFAULT[option], **WITH.get(option, {})}
  kwargs.setdefault('hidden_size', H)
  kwargs.setdefault('num_layers', 2)
  if option == 'cells':
    kwargs.pop('num_layers')
  model = StackedLSTM(**kwargs)
  problems = interop._torch_refusals(model)
  carried = option in interop._TORCH_CARRIED
  named = any(p.startswith(f'{option}=') for p in problems)
  assert named != carried, (option, problems)


def test_import_from_torch_sets_every_stack_field():
  assert set(models.STACK_FIELDS) <= set(export._TORCH_CELL)


def _old_config_json(residual: bool) -> dict:
  """A config.json as the trainer wrote it before the blocks: `model.residual`, no block fields."""
  saved = common.base_config().to_dict()
  for name in ('block', 'norm', 'ffn_factor', 'ffn_activation', 'ffn_gated', 'reverse',
               'use_bias', 'layer_norm_epsilon'):
    del saved['model'][name]
  saved['model']['residual'] = residual
  return saved


@pytest.mark.parametrize('residual,block', [(True, 'residual_op_on_skip'), (False, 'plain')])
def test_old_run_directories_read_residual_as_a_block(tmp_path, residual, block):
  import json
  from train import workdir as workdir_lib
  saved = _old_config_json(residual)
  assert workdir_lib.config_from_dict(saved, 'config.json').model.block == block
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  today = common.base_config()
  today.model.block = block
  workdir_lib.record_config(str(tmp_path), today.to_json())  # the same run: resumes
  today.model.block = 'prenorm'
  with pytest.raises(workdir_lib.ConfigConflict, match='model.block'):
    workdir_lib.record_config(str(tmp_path), today.to_json())
