import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm import StackedLSTM, looped_to_scanned, scanned_to_looped

B, T, F, H = 3, 6, 4, 5
LENGTHS = jnp.array([6, 3, 1])


def _x(seed=0):
  return jax.random.normal(jax.random.key(seed), (B, T, F))


def _close(a, b, **kw):
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, **kw), a, b)


def test_default_is_plain_stack_of_layers():
  model = StackedLSTM(num_layers=2, hidden_size=H)
  assert model.between == 'none' and model.activation == 'tanh'
  assert model.recurrent_activation == 'sigmoid' and model.forget_bias == 1.0
  variables = model.init(jax.random.key(0), _x())
  assert set(variables['params']) == {'layer_0', 'layer_1'}
  y, carries = model.apply(variables, _x())
  assert y.shape == (B, T, H) and len(carries) == 2
  np.testing.assert_allclose(carries[1][0], y[:, -1], atol=1e-6)


def test_between_op_is_applied_to_next_layer_input():
  plain = StackedLSTM(num_layers=2, hidden_size=H)
  relu = StackedLSTM(num_layers=2, hidden_size=H, between='relu')
  variables = plain.init(jax.random.key(0), _x())
  y_plain, c_plain = plain.apply(variables, _x())
  y_relu, c_relu = relu.apply(variables, _x())
  np.testing.assert_array_equal(c_plain[0][0], c_relu[0][0])  # first layer untouched
  assert not np.allclose(y_plain, y_relu)
  custom = StackedLSTM(num_layers=2, hidden_size=H, between=jax.nn.relu)
  np.testing.assert_allclose(custom.apply(variables, _x())[0], y_relu, atol=1e-7)


def test_layernorm_between_has_params_per_gap():
  model = StackedLSTM(num_layers=3, hidden_size=H, between='layernorm')
  params = model.init(jax.random.key(0), _x())['params']
  assert 'between' not in params['layer_0']
  assert params['layer_1']['between']['scale'].shape == (H,)
  assert params['layer_2']['between']['scale'].shape == (H,)


def test_residual_adds_layer_input():
  model = StackedLSTM(num_layers=2, hidden_size=H, block='residual_op_on_skip')
  plain = StackedLSTM(num_layers=2, hidden_size=H)
  variables = model.init(jax.random.key(0), _x())
  y_res, c_res = model.apply(variables, _x())
  y_plain, _ = plain.apply(variables, _x())
  first = StackedLSTM(num_layers=1, hidden_size=H)
  y_first, _ = first.apply({'params': {'layer_0': variables['params']['layer_0']}}, _x())
  np.testing.assert_allclose(y_res, y_plain + y_first, atol=1e-6)


@pytest.mark.slow  # compiles training-mode stacks
def test_dropout_standard_and_variational():
  x = _x()
  for variational in (False, True):
    model = StackedLSTM(num_layers=2, hidden_size=H, dropout=0.5, variational=variational,
                        between=lambda v: v * 0 + 1.0)  # the next layer sees the mask itself
    variables = model.init(jax.random.key(0), x)
    y_eval, _ = model.apply(variables, x, deterministic=True)

    seen = {}

    def capture(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if isinstance(context.module, nn.Dropout):
        seen['mask'] = out
      return out

    with nn.intercept_methods(capture):
      y_train, _ = model.apply(variables, x, deterministic=False,
                               rngs={'dropout': jax.random.key(3)})
    mask = np.asarray(seen['mask'])  # (T, B, H) time-major, values 0 or 2
    assert set(np.unique(mask)) <= {0.0, 2.0}
    assert not np.allclose(y_train, y_eval)
    same_over_time = np.all(mask == mask[:1])
    assert same_over_time == variational


def test_dropout_needs_rng_only_when_training():
  model = StackedLSTM(num_layers=2, hidden_size=H, dropout=0.3)
  variables = model.init(jax.random.key(0), _x())
  model.apply(variables, _x(), deterministic=True)
  with pytest.raises(Exception, match='dropout'):
    model.apply(variables, _x(), deterministic=False)


@pytest.mark.slow  # compiles deep looped and scanned stacks
@pytest.mark.parametrize('bidirectional', [False, True])
def test_scan_layers_matches_looped_after_conversion(bidirectional):
  kw = dict(num_layers=4, hidden_size=H, bidirectional=bidirectional, between='layernorm',
            block='residual_op_on_skip')
  looped, scanned = StackedLSTM(**kw), StackedLSTM(**kw, scan_layers=True)
  x = _x()
  v_loop = looped.init(jax.random.key(0), x)
  v_scan = scanned.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, looped_to_scanned(v_loop['params'])) == \
      jax.tree.map(jnp.shape, v_scan['params'])
  p_scan = looped_to_scanned(v_loop['params'])
  _close(scanned_to_looped(p_scan), v_loop['params'], rtol=0, atol=0)

  def loss(model, params):
    y, carries = model.apply({'params': params}, x, seq_lengths=LENGTHS)
    return jnp.sum(y ** 2) + sum(jnp.sum(a) for a in jax.tree.leaves(carries))

  y_loop, c_loop = looped.apply(v_loop, x, seq_lengths=LENGTHS)
  y_scan, c_scan = scanned.apply({'params': p_scan}, x, seq_lengths=LENGTHS)
  _close(y_scan, y_loop, atol=1e-6)
  _close(c_scan, c_loop, atol=1e-6)
  g_loop = jax.grad(lambda p: loss(looped, p))(v_loop['params'])
  g_scan = jax.grad(lambda p: loss(scanned, p))(p_scan)
  _close(scanned_to_looped(g_scan), g_loop, rtol=1e-5, atol=1e-5)


def test_scan_layers_initial_carry_and_dropout_rngs_differ_per_layer():
  model = StackedLSTM(num_layers=3, hidden_size=H, scan_layers=True, dropout=0.5)
  variables = model.init(jax.random.key(0), _x())
  _, carries = model.apply(variables, _x(), deterministic=True)
  y1, c1 = model.apply(variables, _x(1), initial_carry=carries, deterministic=True)
  looped = StackedLSTM(num_layers=3, hidden_size=H)
  y2, c2 = looped.apply({'params': scanned_to_looped(variables['params'])}, _x(1),
                        initial_carry=carries)
  _close(y1, y2, atol=1e-6)
  _close(c1, c2, atol=1e-6)
  p = variables['params']['layers']['forward']['kernel']
  assert not np.allclose(p[0], p[1])  # layers are initialised independently


@pytest.mark.slow  # compiles bidirectional stacks per padding
@pytest.mark.parametrize('kw', [dict(bidirectional=True), dict(bidirectional=True, block='residual_op_on_skip',
                                                               between='layernorm', peephole=True)])
def test_bidirectional_padding_invariance(kw):
  model = StackedLSTM(num_layers=2, hidden_size=H, **kw)
  x = _x()
  variables = model.init(jax.random.key(0), x)
  pad = (jnp.arange(T)[None, :] >= LENGTHS[:, None])[..., None]
  y1, c1 = model.apply(variables, x, seq_lengths=LENGTHS)
  y2, c2 = model.apply(variables, jnp.where(pad, 1e3, x), seq_lengths=LENGTHS)
  _close(y1, y2, rtol=0, atol=0)
  _close(c1, c2, rtol=0, atol=0)
  assert np.all(np.asarray(y1)[np.broadcast_to(np.asarray(pad), y1.shape)] == 0)
  # each example alone, unpadded, gives the same valid outputs
  for b, n in enumerate(np.asarray(LENGTHS)):
    y_b, _ = model.apply(variables, x[b:b + 1, :n])
    np.testing.assert_allclose(y1[b, :n], y_b[0], atol=1e-6)


def test_per_layer_cells_and_projection():
  model = StackedLSTM(cells=({'features': 8, 'proj_size': 3}, {'features': 6, 'activation': 'relu'}))
  variables = model.init(jax.random.key(0), _x())
  p = variables['params']
  assert p['layer_0']['forward']['proj_kernel'].shape == (8, 3)
  assert p['layer_1']['forward']['kernel'].shape == (3, 24)
  y, carries = model.apply(variables, _x())
  assert y.shape == (B, T, 6) and carries[0][0].shape == (B, 3) and carries[0][1].shape == (B, 8)


@pytest.mark.slow  # compiles every remat and dtype form
def test_remat_and_bfloat16():
  x = _x()
  model = StackedLSTM(num_layers=2, hidden_size=H, remat=True)
  ref = StackedLSTM(num_layers=2, hidden_size=H)
  variables = ref.init(jax.random.key(0), x)
  loss = lambda m: lambda v: jnp.sum(m.apply(v, x, seq_lengths=LENGTHS)[0] ** 2)
  _close(jax.grad(loss(model))(variables), jax.grad(loss(ref))(variables), rtol=1e-5, atol=1e-6)
  bf16 = StackedLSTM(num_layers=2, hidden_size=H, dtype=jnp.bfloat16)
  y, _ = bf16.apply(variables, x)
  assert y.dtype == jnp.bfloat16
  assert jax.tree.leaves(variables)[0].dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(y, np.float32), ref.apply(variables, x)[0], atol=0.05)
  g = jax.grad(lambda v: jnp.sum(bf16.apply(v, x)[0].astype(jnp.float32) ** 2))(variables)
  assert all(a.dtype == jnp.float32 and np.all(np.isfinite(a)) for a in jax.tree.leaves(g))


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_layers=0, hidden_size=4), r'^num_layers must be a positive integer, got 0$'),
    (dict(num_layers=1, hidden_size=-3), r'^hidden_size must be a positive integer, got -3$'),
    (dict(num_layers=2, hidden_size=0), r'^hidden_size must be a positive integer, got 0$'),
    (dict(num_layers=2), r'^hidden_size is required: give hidden_size=N, or cells'),
    (dict(num_layers=2, hidden_size=4, between='sofmax'), r"^between='sofmax' is not known"),
    (dict(num_layers=2, hidden_size=4, activation='rleu'), r"^activation='rleu' is not a known"),
    (dict(num_layers=2, hidden_size=4, proj_size=4),
     r'^proj_size must be smaller than hidden_size \(4\), got 4$'),
    (dict(num_layers=2, hidden_size=4, dropout=1.0), r'^dropout must be in \[0, 1\), got 1.0$'),
    (dict(cells=({'features': 4}, {'features': 5}), block='residual_op_on_skip'),
     r"^block='residual_op_on_skip' needs every layer to output the same width, but cells\[1\] "
     r'outputs 5 and cells\[0\] 4'),
    (dict(cells=({'features': 4}, {'features': 5}, {'features': 6}), scan_layers=True),
     r"^scan_layers=True runs cells\[1:\] as one scanned layer, .* cells\[2\] differs from "
     r"cells\[1\] in \['features'\]$"),
    (dict(cells=({'featurs': 4},)), r"^cells\[0\] has unknown option\(s\) \['featurs'\]"),
    (dict(cells=()), r'^cells must be a sequence .*, got an empty sequence$'),
    (dict(cells={'features': 4}), r'^cells must be a sequence .*, got \w*dict$'),
    (dict(cells=({'features': 4}, 5)),
     r"^cells\[1\] must be a mapping of cell options, .*got int$"),
    (dict(cells=({'features': 4}, {'proj_size': 2})),
     r"^cells\[1\] has no 'features' and hidden_size is not given: set cells\[1\]\['features'\] "
     r'or hidden_size$'),
    (dict(num_layers=3, cells=({'features': 4}, {'features': 4})),
     r'^num_layers=3 disagrees with len\(cells\)=2: leave num_layers out or give num_layers=2$'),
])
def test_bad_config_raises_before_tracing(kwargs, match):
  with pytest.raises(ValueError, match=match) as info:
    StackedLSTM(**kwargs)
  assert '\n' not in str(info.value)


TWO = ({'features': 4}, {'features': 4})  # two layers given per layer, for per-layer overrides


def _second(**options):
  """Two-layer `cells` whose second layer also has `options`."""
  return (TWO[0], {**TWO[1], **options})


# Each cell option check, once as a stack attribute and once as a per-layer override: the message
# names the option as it was given.
@pytest.mark.parametrize('kwargs, message', [
    (dict(hidden_size=4, cells=({}, {'features': -1})),
     "cells[1]['features'] must be a positive integer, got -1"),
    (dict(hidden_size=-2, cells=({'features': 4}, {})), 'hidden_size must be a positive integer'),
    (dict(cells=TWO, proj_size=0), 'proj_size must be None or a positive integer, got 0'),
    (dict(cells=_second(proj_size=2.5)),
     "cells[1]['proj_size'] must be None or a positive integer, got 2.5"),
    (dict(cells=({'features': 4}, {'features': 3}), proj_size=3),
     "proj_size must be smaller than cells[1]['features'] (3), got 3"),
    (dict(hidden_size=3, cells=({'features': 4}, {'proj_size': 3})),
     "cells[1]['proj_size'] must be smaller than hidden_size (3), got 3"),
    (dict(cells=TWO, proj_clip=1.0), 'proj_clip=1.0 needs a projection: set proj_size as well'),
    (dict(cells=_second(proj_clip=1.0)),
     "cells[1]['proj_clip']=1.0 needs a projection: set proj_size as well"),
    (dict(cells=TWO, cell_clip=0), 'cell_clip must be None or a positive number, got 0'),
    (dict(cells=_second(proj_size=2, proj_clip=-1.0)),
     "cells[1]['proj_clip'] must be None or a positive number, got -1.0"),
    (dict(cells=TWO, recurrent_activation='sigmod'),
     "recurrent_activation='sigmod' is not a known"),
    (dict(cells=_second(activation='rleu')), "cells[1]['activation']='rleu' is not a known"),
    (dict(cells=_second(output_activation='nope')),
     "cells[1]['output_activation']='nope' is not a known"),
    (dict(cells=TWO, coupled_gates=True, forget_gate=False),
     'coupled_gates=True makes the input gate 1 - f: it needs forget_gate=True, got '
     'forget_gate=False'),
    (dict(cells=_second(input_gate=False), coupled_gates=True),
     "coupled_gates=True makes the input gate 1 - f: it needs cells[1]['input_gate']=True, got "
     "cells[1]['input_gate']=False"),
    (dict(cells=TWO, weight_drop=1.0), 'weight_drop must be in [0, 1), got 1.0'),
    (dict(cells=_second(zoneout_hidden=-0.5)),
     "cells[1]['zoneout_hidden'] must be in [0, 1), got -0.5"),
])
def test_bad_cell_option_is_named_as_given(kwargs, message):
  with pytest.raises(ValueError) as info:
    StackedLSTM(**kwargs)
  assert str(info.value).startswith(message), str(info.value)
  assert '\n' not in str(info.value) and 'layer 0' not in str(info.value)


def _carry(width=H, batch=B, dtype=jnp.float32):
  return jnp.zeros((batch, width), dtype), jnp.zeros((batch, width), dtype)


@pytest.fixture(scope='module')
def two_layers():
  model = StackedLSTM(num_layers=2, hidden_size=H)
  return model, model.init(jax.random.key(0), _x())


@pytest.mark.parametrize('arguments, error, match', [
    (dict(x=np.ones((B, T, F)).tolist()), TypeError,
     r'^x must be an array of shape \(batch, time, features\), got list$'),
    (dict(x=jnp.ones((B, F))), ValueError, r'^x must have rank 3 \(batch, time, features\)'),
    (dict(x=jnp.ones((B, T, F + 1))), ValueError,
     rf'^x has {F + 1} features \(its last axis\), but the variables were made for {F}: give x of '
     rf'shape \(batch, time, {F}\)$'),
    (dict(seq_lengths=[1, 2, 3]), TypeError,
     rf'^seq_lengths must be an integer array of shape \({B},\), got list$'),
    (dict(seq_lengths=jnp.array([1, -1, 2])), ValueError, r'^seq_lengths must lie in \[0, 6\]'),
    (dict(initial_carry=(_carry(),)), ValueError,
     r'^initial_carry must hold one carry per layer \(2\), got a tuple of 1$'),
    (dict(initial_carry=_carry()[0]), ValueError,
     r'^initial_carry must hold one carry per layer \(2\), got an array of shape'),
    (dict(initial_carry=(_carry(), _carry()[0])), ValueError,
     rf'^initial_carry\[1\] must be an \(h, c\) pair of arrays, got an array of shape '
     rf'\({B}, {H}\)$'),
    (dict(initial_carry=(_carry(), (_carry(H + 1)[0], _carry()[1]))), ValueError,
     rf'^initial_carry\[1\]\[0\] \(h\) must have shape \(batch, {H}\) = \({B}, {H}\), got an array '
     rf'of shape \({B}, {H + 1}\)$'),
    (dict(initial_carry=(_carry(batch=B + 1), _carry())), ValueError,
     rf'^initial_carry\[0\]\[0\] \(h\) must have shape \(batch, {H}\) = \({B}, {H}\)'),
    (dict(initial_carry=(_carry(), (_carry()[0], None))), ValueError,
     rf'^initial_carry\[1\]\[1\] \(c\) must have shape \(batch, {H}\) = \({B}, {H}\), '
     r'got NoneType$'),
    (dict(initial_carry=(_carry(), _carry(dtype=jnp.bfloat16))), TypeError,
     r'^initial_carry must hold h and c in one floating dtype, float32 \(the layer computes in '
     r'it\) or wider, got h bfloat16 and c bfloat16$'),
    (dict(initial_carry=(_carry(), (_carry()[0], _carry(dtype=jnp.int32)[1]))), TypeError,
     r'^initial_carry must hold h and c in one floating dtype, .* got h float32 and c int32$'),
])
def test_bad_call_arguments(two_layers, arguments, error, match):
  model, variables = two_layers
  arguments = {'x': _x(), **arguments}
  with pytest.raises(error) as info:
    model.apply(variables, **arguments)
  assert re.search(match, str(info.value)), str(info.value)  # (pytest's match= sees JAX's note)


def test_bidirectional_initial_carry_names_the_direction():
  model = StackedLSTM(num_layers=1, hidden_size=H, bidirectional=True)
  variables = model.init(jax.random.key(0), _x())
  with pytest.raises(ValueError, match=r'^initial_carry\[0\] must be a \(forward, backward\) pair '
                                       r'of \(h, c\) carries \(bidirectional=True\), got an array'):
    model.apply(variables, _x(), initial_carry=(_carry()[0],))
  with pytest.raises(ValueError, match=r'^initial_carry\[0\]\[1\] must be an \(h, c\) pair'):
    model.apply(variables, _x(), initial_carry=((_carry(), _carry()[0]),))
  y, carries = model.apply(variables, _x(), initial_carry=((_carry(), _carry()),))
  assert y.shape == (B, T, 2 * H) and len(carries) == 1


@pytest.mark.slow  # compiles many stack forms
def test_carry_checks_hold_for_projections_and_scanned_layers():
  model = StackedLSTM(num_layers=3, hidden_size=H, proj_size=2, scan_layers=True)
  variables = model.init(jax.random.key(0), _x())
  good = ((jnp.zeros((B, 2)), jnp.zeros((B, H))),) * 3
  y, carries = model.apply(variables, _x(), initial_carry=good)
  assert y.shape == (B, T, 2)
  with pytest.raises(ValueError, match=rf'^initial_carry\[2\]\[0\] \(h\) must have shape '
                                       rf'\(batch, 2\) = \({B}, 2\), got an array of shape'):
    model.apply(variables, _x(), initial_carry=good[:2] + (_carry(),))
  bf16 = StackedLSTM(num_layers=2, hidden_size=H, dtype=jnp.bfloat16)
  variables = bf16.init(jax.random.key(0), _x())
  y, _ = bf16.apply(variables, _x(), initial_carry=(_carry(),) * 2)
  assert y.dtype == jnp.float32  # a wider carry than the compute dtype is fine
  y, carries = bf16.apply(variables, _x(), initial_carry=(_carry(dtype=jnp.bfloat16),) * 2)
  assert y.dtype == jnp.bfloat16
  bf16.apply(variables, _x(), initial_carry=carries)  # its own final carries, fed back


@pytest.mark.slow  # compiles looped and scanned stacks
def test_scan_layers_with_remat_and_variational_dropout_matches_looped():
  kw = dict(num_layers=3, hidden_size=H, dropout=0.3, variational=True, remat=True)
  looped, scanned = StackedLSTM(**kw), StackedLSTM(**kw, scan_layers=True)
  x = _x()
  v = looped.init(jax.random.key(0), x)
  p_scan = looped_to_scanned(v['params'])
  y_loop, _ = looped.apply(v, x, seq_lengths=LENGTHS, deterministic=True)
  y_scan, _ = scanned.apply({'params': p_scan}, x, seq_lengths=LENGTHS, deterministic=True)
  _close(y_scan, y_loop, atol=1e-6)
  loss = lambda m, p: jnp.sum(m.apply({'params': p}, x, deterministic=False,
                                      rngs={'dropout': jax.random.key(2)})[0] ** 2)
  g = jax.grad(lambda p: loss(scanned, p))(p_scan)
  assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(g))
