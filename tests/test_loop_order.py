"""lstm.loop_order: the inference loop order measured once per machine and shape, cached in memory
and on disk, and the policies that override it."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm import StackedLSTM, cache, fast, loop_order, native

pytestmark = pytest.mark.skipif(jax.default_backend() != 'cpu',
                                reason='measured on CPU only; accelerators run batch-major')


@pytest.fixture
def fresh(monkeypatch, tmp_path):
  """The 'measure' policy, an empty cache directory and an empty memory."""
  monkeypatch.setenv('LSTM_LOOP_ORDER', 'measure')
  monkeypatch.setenv(cache.ENV, str(tmp_path))
  monkeypatch.setattr(loop_order, '_memory', {})
  return tmp_path / 'loop_order.json'


class FakeMeasure:
  """Stands in for the timing: returns the given (batch-major, feature-major) seconds."""

  def __init__(self, batch_major, feature_major):
    self.times, self.calls = (batch_major, feature_major), []

  def __call__(self, *shape):
    self.calls.append(shape)
    return self.times


@pytest.mark.parametrize('times, want', [((1.0, 0.8), True), ((0.8, 1.0), False)])
def test_the_faster_loop_order_is_chosen_and_measured_once(fresh, times, want):
  measure = FakeMeasure(*times)
  assert loop_order.feature_major(64, 256, 128, jnp.float32, measure) is want
  assert loop_order.feature_major(64, 256, 128, jnp.float32, measure) is want
  assert measure.calls == [(64, 256, 128, jnp.float32, loop_order.MEASURE_STEPS)]
  saved = json.loads(fresh.read_text())
  assert saved == {loop_order.cache_key(64, 256, 128, jnp.float32): want}
  assert loop_order.cpu_name() in next(iter(saved))


def test_a_tie_keeps_the_rule():
  assert loop_order._faster_is_feature_major(1.0, 0.99, default=False) is False
  assert loop_order._faster_is_feature_major(1.0, 1.02, default=True) is True
  assert loop_order._faster_is_feature_major(1.0, 0.9, default=False) is True


def test_the_file_is_read_by_a_new_process_and_a_damaged_one_is_measured_anew(fresh, monkeypatch):
  loop_order.feature_major(32, 512, 64, jnp.float32, FakeMeasure(1.0, 0.5))
  monkeypatch.setattr(loop_order, '_memory', {})  # a new process: only the file remains
  again = FakeMeasure(0.5, 1.0)
  assert loop_order.feature_major(32, 512, 64, jnp.float32, again) is True and again.calls == []
  fresh.write_text('{"half a fi')
  monkeypatch.setattr(loop_order, '_memory', {})
  assert loop_order.feature_major(32, 512, 64, jnp.float32, again) is False
  assert len(again.calls) == 1
  assert list(json.loads(fresh.read_text()).values()) == [False]


def test_shapes_dtypes_and_machines_are_kept_apart(fresh):
  measure = FakeMeasure(1.0, 0.5)
  for shape in [(32, 256, 128, jnp.float32), (32, 256, 256, jnp.float32),
                (64, 256, 128, jnp.float32), (32, 256, 128, jnp.bfloat16)]:
    loop_order.feature_major(*shape, measure)
  assert len(measure.calls) == 4 and len(json.loads(fresh.read_text())) == 4
  assert 'bfloat16' in loop_order.cache_key(32, 256, 128, jnp.bfloat16)


def test_an_unwritable_cache_keeps_the_choice_in_memory(fresh, monkeypatch, tmp_path):
  blocker = tmp_path / 'not_a_directory'
  blocker.write_text('')
  monkeypatch.setenv(cache.ENV, str(blocker / 'cache'))
  measure = FakeMeasure(1.0, 0.5)
  assert loop_order.feature_major(32, 256, 128, jnp.float32, measure) is True
  assert loop_order.feature_major(32, 256, 128, jnp.float32, measure) is True
  assert len(measure.calls) == 1 and blocker.read_text() == ''


@pytest.mark.parametrize('policy, want', [('rule', [True, False]), ('batch_major', [False, False]),
                                          ('feature_major', [True, True])])
def test_policies_override_the_measurement(fresh, monkeypatch, policy, want):
  monkeypatch.setenv('LSTM_LOOP_ORDER', policy)
  measure = FakeMeasure(1.0, 1.0)
  got = [loop_order.feature_major(32, 256, 16, jnp.float32, measure),
         loop_order.feature_major(32, 200, 16, jnp.float32, measure)]
  assert got == want and measure.calls == [] and not fresh.exists()
  loop_order.set_policy('batch_major')
  try:
    assert loop_order.feature_major(32, 256, 16, jnp.float32, measure) is False
  finally:
    loop_order.set_policy(None)


def test_small_layers_and_several_processes_are_not_measured(fresh, monkeypatch):
  measure = FakeMeasure(1.0, 0.1)
  assert loop_order.feature_major(8, 1024, 16, jnp.float32, measure) is False
  assert loop_order.feature_major(256, 64, 16, jnp.float32, measure) is False
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  assert loop_order.feature_major(32, 256, 16, jnp.float32, measure) is True  # the rule
  assert measure.calls == []


def test_a_bad_policy_names_the_variable(monkeypatch):
  monkeypatch.setenv('LSTM_LOOP_ORDER', 'fastest')
  with pytest.raises(ValueError, match="^LSTM_LOOP_ORDER='fastest' is not a loop-order policy; "
                                       'use one of measure, rule, batch_major, feature_major$'):
    loop_order.policy()
  with pytest.raises(ValueError, match=r"^set_policy\(name\): name='auto' is not a loop-order "
                                       'policy; use one of measure, rule, batch_major, feature_major, or '
                                       'None for LSTM_LOOP_ORDER or the default$'):
    loop_order.set_policy('auto')


@pytest.mark.slow  # times both loop orders for real
def test_real_measurement_inside_a_jit_trace_matches_the_reference(fresh, monkeypatch):
  """The first trace of a 16 x 128 stack measures both loop orders for real (outside the trace),
  keeps the faster, and computes what the reference path computes (XLA loops: the CPU kernel,
  which would take these layers, is off)."""
  monkeypatch.setenv(native.ENV, '0')
  measured = []
  real = fast._measure_loop_orders
  monkeypatch.setattr(fast, '_measure_loop_orders',
                      lambda *shape: measured.append(real(*shape)) or measured[-1])
  model = StackedLSTM(num_layers=2, hidden_size=128)
  x = jax.random.normal(jax.random.key(0), (16, 5, 8))
  variables = model.init(jax.random.key(1), x)
  got = jax.jit(lambda v, x: model.apply(v, x))(variables, x)
  assert len(measured) == 2  # layer 0 (8 features) and layer 1 (128)
  assert all(t > 0 and np.isfinite(t) for times in measured for t in times)
  saved = json.loads(fresh.read_text())
  assert sorted(saved) == sorted(loop_order.cache_key(16, 128, f, jnp.float32) for f in (8, 128))
  with fast.reference_path():
    want = jax.jit(lambda v, x: model.apply(v, x))(variables, x)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)


def test_cpu_name_appends_family_and_model_to_a_bare_name(tmp_path):
  info = tmp_path / 'cpuinfo'
  info.write_text('processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n'
                  'model name\t: AMD EPYC\n\nprocessor\t: 1\nmodel name\t: other\n')
  assert loop_order.cpu_name(str(info)) == 'AMD EPYC (family 26 model 2)'
  info.write_text('cpu family\t: 6\nmodel\t\t: 143\n'
                  'model name\t: Intel(R) Xeon(R) Platinum 8480C CPU @ 2.00GHz\n')
  assert loop_order.cpu_name(str(info)) == 'Intel(R) Xeon(R) Platinum 8480C CPU @ 2.00GHz'
