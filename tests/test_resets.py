"""Segment resets: a batch with `segment_starts` gives exactly what running each segment alone
gives (outputs concatenated, final carries), uni- and bidirectional, padded, reversed, stacked,
on the fast path and on the reference path."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm import LSTMCell, LSTMLayer, StackedLSTM, fast

B, T, F, H = 3, 8, 4, 5
LENGTHS = np.array([8, 6, 3])
# row 0: three segments; row 1: step 0 marked (drops the initial carry), a mark in the padding;
# row 2: one segment
STARTS = np.array([[0, 0, 1, 0, 0, 1, 0, 0],
                   [1, 0, 0, 1, 0, 0, 0, 1],
                   [0, 0, 0, 0, 0, 0, 0, 0]], bool)
TOL = dict(rtol=1e-5, atol=1e-5)


def segments(b):
  """[(begin, end)] of row b's segments within its length."""
  n = LENGTHS[b]
  bounds = [0] + [t for t in range(1, n) if STARTS[b, t]] + [n]
  return list(zip(bounds[:-1], bounds[1:]))


def directions(model):
  """For each direction of a layer, whether it reads backwards."""
  return (model.reverse, not model.reverse) if model.bidirectional else (model.reverse,)


def direction_carry(model, carries, layer, d):
  return carries[layer][d] if model.bidirectional else carries[layer]


def map_directions(model, carries, fn):
  """The stack's carries with `fn(carry, reads_backwards)` applied to each direction's (h, c)."""
  out = []
  for layer in range(model.depth):
    mapped = tuple(fn(direction_carry(model, carries, layer, d), back)
                   for d, back in enumerate(directions(model)))
    out.append(mapped if model.bidirectional else mapped[0])
  return tuple(out)


def random_carry(model, x, seed=7):
  shapes = jax.eval_shape(model.init_with_output, jax.random.key(0), x)[0][1]
  leaves, treedef = jax.tree.flatten(shapes)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [jax.random.normal(k, a.shape) for k, a in zip(keys, leaves)])


def check_against_segments(model, variables, x, initial_carry, path, fast_calls):
  """The packed batch (on `path`) against each segment run alone; returns the packed outputs."""
  run = lambda v, x, c, s: model.apply(v, x, jnp.asarray(LENGTHS), c, segment_starts=s,
                                       deterministic=True)
  fast_calls.clear()
  with fast.reference_path(path == 'reference'):
    y, carries = jax.jit(lambda *a: run(*a))(variables, x, initial_carry, jnp.asarray(STARTS))
  on_fast_path = path == 'fast' and not model.peephole
  assert bool(fast_calls) == on_fast_path
  alone = jax.jit(lambda v, x, c: model.apply(v, x, None, c, deterministic=True))
  for b in range(B):
    parts = segments(b)
    outputs, finals = [], []
    for k, (begin, end) in enumerate(parts):
      init = None
      if initial_carry is not None:
        # A direction starts from the row's initial carry in the segment its reading begins
        # with: the first one forwards (unless step 0 is marked), the last one backwards.
        def start(carry, back, k=k):
          keep = k == len(parts) - 1 if back else (k == 0 and not STARTS[b, 0])
          return tuple(a[b:b + 1] if keep else jnp.zeros_like(a[b:b + 1]) for a in carry)
        init = map_directions(model, initial_carry, start)
      y_seg, final = alone(variables, x[b:b + 1, begin:end], init)
      outputs.append(y_seg[0])
      finals.append(final)
    np.testing.assert_allclose(y[b, :LENGTHS[b]], jnp.concatenate(outputs, 0), **TOL)
    np.testing.assert_array_equal(y[b, LENGTHS[b]:], 0.0)
    # A direction's final carry is that of the segment its reading ends with.
    for layer in range(model.depth):
      for d, back in enumerate(directions(model)):
        got = direction_carry(model, carries, layer, d)
        want = direction_carry(model, finals[0] if back else finals[-1], layer, d)
        for g, w in zip(got, want):
          np.testing.assert_allclose(g[b], w[0], **TOL)
  return y


MODELS = {
    'one-layer': dict(num_layers=1),
    'reverse': dict(num_layers=1, reverse=True),
    'stack': dict(num_layers=3),
    'bidirectional': dict(num_layers=2, bidirectional=True),
    'bidirectional-reverse-residual': dict(num_layers=2, bidirectional=True, reverse=True,
                                           block='residual_op_on_skip'),
    'bidirectional-scan_layers-cifg': dict(num_layers=3, bidirectional=True, scan_layers=True,
                                           coupled_gates=True),
    'bidirectional-peephole-zoneout': dict(num_layers=2, bidirectional=True, peephole=True,
                                           zoneout_cell=0.3),
}


@pytest.mark.slow  # every segment as its own run, for every option set
@pytest.mark.parametrize('path', ['fast', 'reference'])
@pytest.mark.parametrize('with_carry', [False, True], ids=['zero-carry', 'initial-carry'])
@pytest.mark.parametrize('case', list(MODELS))
def test_segments_give_what_they_give_alone(fast_calls, case, with_carry, path):
  model = StackedLSTM(hidden_size=H, **MODELS[case])
  x = jax.random.normal(jax.random.key(0), (B, T, F))
  variables = model.init(jax.random.key(1), x)
  initial_carry = random_carry(model, x) if with_carry else None
  y = check_against_segments(model, variables, x, initial_carry, path, fast_calls)
  # the resets do change the result (row 2 has no segment boundary)
  y_plain, _ = model.apply(variables, x, jnp.asarray(LENGTHS), initial_carry, deterministic=True)
  assert not np.allclose(y[:2], y_plain[:2], atol=1e-3)


@pytest.mark.slow  # gradients of bidirectional stacks per segment
@pytest.mark.parametrize('path', ['fast', 'reference'])
def test_gradients_are_the_sum_over_segments(path):
  """The gradient of a packed batch's loss is the sum of each segment's own gradient (the
  training loops, forward and backward, reset too)."""
  model = StackedLSTM(num_layers=2, hidden_size=H, bidirectional=True, coupled_gates=True)
  x = jax.random.normal(jax.random.key(0), (B, T, F))
  variables = model.init(jax.random.key(1), x)
  weights = jax.random.normal(jax.random.key(2), (B, T, 2 * H))

  def loss(v, x, w, lengths, starts):
    return jnp.sum(model.apply(v, x, lengths, segment_starts=starts)[0] * w)

  grad = jax.grad(loss, argnums=(0, 1))
  with fast.reference_path(path == 'reference'):
    packed = jax.jit(lambda *a: grad(*a))
    g_params, g_x = packed(variables, x, weights, jnp.asarray(LENGTHS), jnp.asarray(STARTS))
    want_params = jax.tree.map(jnp.zeros_like, variables)
    want_x = np.zeros(x.shape, np.float32)
    for b in range(B):
      for begin, end in segments(b):
        gp, gx = packed(variables, x[b:b + 1, begin:end], weights[b:b + 1, begin:end], None, None)
        want_params = jax.tree.map(jnp.add, want_params, gp)
        want_x[b, begin:end] = gx[0]
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5),
               g_params, want_params)
  np.testing.assert_allclose(g_x, want_x, **TOL)


@pytest.mark.parametrize('reverse', [False, True])
def test_layer_segments_give_what_they_give_alone(reverse):
  layer = LSTMLayer(LSTMCell(H), reverse=reverse)
  x = jax.random.normal(jax.random.key(0), (B, T, F))
  variables = layer.init(jax.random.key(1), x)
  y, (h, c) = layer.apply(variables, x, jnp.asarray(LENGTHS), None, jnp.asarray(STARTS))
  for b in range(B):
    outs = [layer.apply(variables, x[b:b + 1, begin:end]) for begin, end in segments(b)]
    np.testing.assert_allclose(y[b, :LENGTHS[b]], jnp.concatenate([o[0][0] for o in outs]), **TOL)
    last = outs[0] if reverse else outs[-1]
    np.testing.assert_allclose(h[b], last[1][0][0], **TOL)
    np.testing.assert_allclose(c[b], last[1][1][0], **TOL)


def test_marks_in_the_padding_change_nothing():
  model = StackedLSTM(num_layers=2, hidden_size=H, bidirectional=True)
  x = jax.random.normal(jax.random.key(0), (B, T, F))
  variables = model.init(jax.random.key(1), x)
  padding = np.arange(T)[None, :] >= LENGTHS[:, None]
  lengths = jnp.asarray(LENGTHS)
  y1, c1 = model.apply(variables, x, lengths, segment_starts=jnp.asarray(STARTS & ~padding))
  y2, c2 = model.apply(variables, x, lengths, segment_starts=jnp.asarray(STARTS | padding))
  np.testing.assert_array_equal(y1, y2)
  jax.tree.map(np.testing.assert_array_equal, c1, c2)


@pytest.mark.parametrize('starts, error, match', [
    (jnp.zeros((B, T - 1), bool), ValueError,
     rf'^segment_starts must have shape \(batch, time\) = \({B}, {T}\), got \({B}, {T - 1}\)$'),
    (np.zeros((B, T), np.int32), TypeError,
     r'^segment_starts must be a boolean array, got dtype int32$'),
    ([[True] * T] * B, ValueError, r'^segment_starts must have shape .*, got list$'),
])
def test_bad_segment_starts(starts, error, match):
  model = StackedLSTM(num_layers=1, hidden_size=H)
  x = jnp.ones((B, T, F))
  variables = model.init(jax.random.key(0), x)
  for call in (lambda: model.apply(variables, x, segment_starts=starts),
               lambda: LSTMLayer(LSTMCell(H)).init(jax.random.key(0), x, segment_starts=starts)):
    with pytest.raises(error) as info:
      call()
    assert re.search(match, str(info.value)), str(info.value)  # (match= would see JAX's note)
