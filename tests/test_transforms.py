"""Every public module under every JAX transformation, on each of the library's paths.

A matrix: transformation x path x module. The paths are the CPU kernel (`lstm.native`, where it
builds), the fast path's XLA loops (`native.disabled()`) and the reference `lax.scan`
(`fast.reference_path()`); the modules `LSTMCell` (one step; it has one path), `LSTMLayer` and a
two-layer `StackedLSTM`. Each cell computes the transformation on its path and compares values
and gradients with the same transformation on the reference path, and with a computation that
does not use the transformation (an unjitted call, a loop over members, the unsharded gradient,
the directional derivative from `jax.grad`), so that the reference row checks something too.
"""
from __future__ import annotations

import contextlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from lstm import LSTMCell, LSTMLayer, StackedLSTM, fast, native
from tests.test_fast import _assert_trees_close, _jit

B, T, F, H = 3, 5, 4, 16  # H a multiple of 16: the kernel takes the layers
LENGTHS = jnp.array([5, 3, 1])
PATHS = ('kernel', 'xla', 'reference')
MODULES = ('cell', 'layer', 'stack')


def _path(name: str):
  if name == 'kernel':
    assert native.available(), native._status
    return contextlib.nullcontext()
  return native.disabled() if name == 'xla' else fast.reference_path()


class _Model:
  """A module as functions of (variables, x, carry): `apply` -> (outputs, final carry), `loss`."""

  def __init__(self, kind: str):
    self.kind = kind
    if kind == 'cell':
      self.module = LSTMCell(H)
    elif kind == 'layer':
      self.module = LSTMLayer(LSTMCell(H))
    else:
      self.module = StackedLSTM(num_layers=2, hidden_size=H)
    self.x = jax.random.normal(jax.random.key(0), (B, T, F))
    keys = jax.random.split(jax.random.key(2), 2)
    one = (jax.random.normal(keys[0], (B, H)), jax.random.normal(keys[1], (B, H)))
    self.carry = (one, jax.tree.map(lambda a: -a, one)) if kind == 'stack' else one
    self.weights = jax.random.normal(jax.random.key(3), (B, H) if kind == 'cell' else (B, T, H))

  def init(self, key, x):
    if self.kind == 'cell':
      return self.module.init(key, self.carry, x[:, 0])
    return self.module.init(key, x)

  def apply(self, variables, x, carry, seq_lengths=None):
    if self.kind == 'cell':
      new_carry, h = self.module.apply(variables, carry, x[:, 0])
      return h, new_carry
    lengths = LENGTHS if seq_lengths is None else seq_lengths
    return self.module.apply(variables, x, lengths, carry)

  def loss(self, variables, x, carry):
    y, final = self.apply(variables, x, carry)
    return jnp.sum(y * self.weights) + sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves(final))


_VARIABLES = {}


def _setup(kind):
  model = _Model(kind)
  if kind not in _VARIABLES:
    with fast.reference_path():
      _VARIABLES[kind] = model.init(jax.random.key(1), model.x)
  return model, _VARIABLES[kind]


def _on(path: str, fn, *args):
  """`fn(*args)` traced on `path` (a new function each time: jit caches traces per function)."""
  with _path(path):
    return fn(*args)


def _check(kind, path, transform, independent=None, tol=1e-5):
  """`transform(model, variables)` on `path` equals it on the reference path and, when given,
  `independent(model, variables)` (computed on the reference path without the transformation)."""
  model, variables = _setup(kind)
  got = _on(path, transform, model, variables)
  want = _on('reference', transform, model, variables)
  _assert_trees_close(got, want, tol)
  if independent is not None:
    _assert_trees_close(got, _on('reference', independent, model, variables), tol)
  return got


def _on_path(*values, path: str, id: str):
  """A parameter set for `path`: the kernel's path is in the default set; the XLA loops' and the
  reference path's are in the slow set."""
  return pytest.param(*values, id=id, marks=() if path == 'kernel' else pytest.mark.slow)


def _matrix():
  """(module, path): the cell has one path (one step runs no fast path)."""
  return ([pytest.param('cell', 'reference', id='cell')]
          + [_on_path(kind, path, path=path, id=f'{kind}-{path}')
             for kind in MODULES[1:] for path in PATHS])


matrix = pytest.mark.parametrize('kind, path', _matrix())


def _tangents(tree, seed):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [jax.random.normal(k, a.shape, a.dtype)
                                      for k, a in zip(keys, leaves)])


def _dot(a, b):
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ----------------------------------------------------------------------------------------------
# jit, reverse mode and its higher orders


@matrix
def test_jit(kind, path):
  _check(kind, path, lambda m, v: _jit(lambda v, x, c: m.apply(v, x, c))(v, m.x, m.carry),
         independent=lambda m, v: m.apply(v, m.x, m.carry))


@matrix
def test_grad(kind, path):
  """Gradients wrt parameters, inputs and initial carry; their projection on a direction equals
  the forward-mode directional derivative of the reference path."""
  grads = lambda m, v: _jit(jax.grad(m.loss, argnums=(0, 1, 2)))(v, m.x, m.carry)
  got = _check(kind, path, grads)
  model, variables = _setup(kind)
  primals = (variables, model.x, model.carry)
  tangents = _tangents(primals, 7)
  with fast.reference_path():
    _, directional = jax.jvp(model.loss, primals, tangents)
  np.testing.assert_allclose(_dot(got, tangents), directional, rtol=1e-4)


def _grad_norm(m):
  """|d loss / dx|^2 + |d loss / d carry|^2: a gradient penalty, differentiated again."""
  def penalty(v, x, c):
    gx, gc = jax.grad(m.loss, argnums=(1, 2))(v, x, c)
    return sum(jnp.sum(g ** 2) for g in jax.tree.leaves((gx, gc)))
  return penalty


@matrix
def test_grad_of_grad_reverse_over_reverse(kind, path):
  _check(kind, path, lambda m, v: _jit(jax.grad(_grad_norm(m), argnums=(0, 1, 2)))(
      v, m.x, m.carry), tol=1e-4)


@matrix
def test_grad_of_grad_forward_over_reverse(kind, path):
  """A Hessian-vector product by jvp of grad equals the one by grad of the directional grad."""
  def hvp_forward(m, v):
    tx = _tangents(m.x, 8)
    return _jit(lambda v, x, c: jax.jvp(lambda x: jax.grad(m.loss, argnums=1)(v, x, c),
                                        (x,), (tx,))[1])(v, m.x, m.carry)

  def hvp_reverse(m, v):
    tx = _tangents(m.x, 8)
    return jax.grad(lambda x: jnp.vdot(jax.grad(m.loss, argnums=1)(v, x, m.carry), tx))(m.x)

  _check(kind, path, hvp_forward, independent=hvp_reverse, tol=1e-4)


# ----------------------------------------------------------------------------------------------
# Forward mode


@matrix
def test_jvp(kind, path):
  def jvp(m, v):
    primals = (v, m.x, m.carry)
    return _jit(lambda *p: jax.jvp(m.apply, p, _tangents(primals, 9)))(*primals)

  def by_reverse_mode(m, v):
    """Each output's tangent as the gradient of that output dotted with the tangents."""
    primals = (v, m.x, m.carry)
    tangents = _tangents(primals, 9)
    out, pullback = jax.vjp(m.apply, *primals)
    basis = jax.tree.map(jnp.zeros_like, out)
    leaves, treedef = jax.tree.flatten(basis)
    rows = []
    for i, leaf in enumerate(leaves):
      def one(index, i=i, leaf=leaf):
        e = jnp.zeros(leaf.size).at[index].set(1.0).reshape(leaf.shape)
        ct = jax.tree.unflatten(treedef, [e if j == i else l for j, l in enumerate(leaves)])
        return _dot(pullback(ct), tangents)
      rows.append(jax.vmap(one)(jnp.arange(leaf.size)).reshape(leaf.shape))
    return out, jax.tree.unflatten(treedef, rows)

  _check(kind, path, jvp, independent=by_reverse_mode, tol=1e-4)


@matrix
def test_jacfwd_equals_jacrev(kind, path):
  def jac(m, v, mode=jax.jacfwd):
    return _jit(lambda c: mode(lambda c: m.apply(v, m.x, c)[0])(c))(m.carry)

  _check(kind, path, jac, independent=lambda m, v: jac(m, v, jax.jacrev), tol=1e-4)


@matrix
def test_hessian(kind, path):
  def hessian(m, v, mode=jax.hessian):
    return _jit(lambda x: mode(lambda x: m.loss(v, x, m.carry))(x))(m.x)

  _check(kind, path, hessian, independent=lambda m, v: hessian(
      m, v, lambda f: jax.jacrev(jax.jacrev(f))), tol=1e-4)


@matrix
def test_linearize(kind, path):
  def linearized(m, v):
    tx = _tangents(m.x, 10)
    y, f_jvp = jax.linearize(lambda x: m.apply(v, x, m.carry), m.x)
    return y, f_jvp(tx)

  _check(kind, path, linearized, independent=lambda m, v: jax.jvp(
      lambda x: m.apply(v, x, m.carry), (m.x,), (_tangents(m.x, 10),)), tol=1e-4)


def test_jvp_of_the_fast_path_takes_the_reference_path(fast_calls):
  """Forward mode runs the reference scan by itself (no custom_vjp in its way), and reverse mode
  keeps the fast path."""
  model, variables = _setup('stack')
  jax.eval_shape(lambda x: jax.jvp(lambda x: model.apply(variables, x, model.carry), (x,), (x,)),
                 model.x)
  assert not fast_calls
  jax.eval_shape(jax.grad(model.loss), variables, model.x, model.carry)
  assert len(fast_calls) == 2


# ----------------------------------------------------------------------------------------------
# vmap, checkpoint


@matrix
def test_vmap_over_data(kind, path):
  def members(m):
    xs = jnp.stack([m.x, jnp.flip(m.x, 1)])
    cs = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), m.carry)
    return xs, cs

  def vmapped(m, v):
    xs, cs = members(m)
    return _jit(jax.vmap(jax.value_and_grad(m.loss, argnums=(0, 1)), in_axes=(None, 0, 0)))(
        v, xs, cs)

  def looped(m, v):
    xs, cs = members(m)
    runs = [jax.value_and_grad(m.loss, argnums=(0, 1))(v, xs[i], jax.tree.map(lambda a: a[i], cs))
            for i in range(2)]
    return jax.tree.map(lambda *a: jnp.stack(a), *runs)

  _check(kind, path, vmapped, independent=looped)


@matrix
def test_vmap_over_init_keys(kind, path):
  """An ensemble: parameters initialised under vmap over keys, then applied under vmap."""
  keys = jax.random.split(jax.random.key(11), 2)

  def ensemble(m, v):
    variables = jax.vmap(lambda k: m.init(k, m.x))(keys)
    return _jit(jax.vmap(lambda v: m.apply(v, m.x, m.carry)))(variables)

  def looped(m, v):
    runs = [m.apply(m.init(k, m.x), m.x, m.carry) for k in keys]
    return jax.tree.map(lambda *a: jnp.stack(a), *runs)

  _check(kind, path, ensemble, independent=looped)


@matrix
def test_checkpoint(kind, path):
  _check(kind, path, lambda m, v: _jit(jax.grad(jax.checkpoint(m.loss), argnums=(0, 1, 2)))(
      v, m.x, m.carry), independent=lambda m, v: jax.grad(m.loss, argnums=(0, 1, 2))(
          v, m.x, m.carry))


# ----------------------------------------------------------------------------------------------
# shard_map, export, lowering for other platforms


@matrix
def test_shard_map_data_parallel_gradients(kind, path):
  """Data parallelism with check_vma on: the batch sharded over a mesh axis, parameters
  replicated, per-shard gradients summed; they equal the unsharded gradients."""
  mesh = jax.make_mesh((1,), ('data',))
  spec = PartitionSpec('data')

  def sharded(m, v):
    def step(v, x, c):
      return jax.lax.psum(jax.grad(m.loss, argnums=0)(v, x, c), 'data')
    x, c = jax.device_put((m.x, m.carry), NamedSharding(mesh, spec))
    return _jit(jax.shard_map(step, mesh=mesh, in_specs=(PartitionSpec(), spec, spec),
                              out_specs=PartitionSpec(), check_vma=True))(v, x, c)

  _check(kind, path, sharded, independent=lambda m, v: jax.grad(m.loss)(v, m.x, m.carry))


def _kernel_calls(text: str) -> set[str]:
  """The kernel's custom calls in a StableHLO module's text."""
  return set(re.findall(r'custom_call @(stacked_lstm_\w+)', text))


def _exported(m, v, *shapes):
  """`m.apply` exported, serialized, deserialized and called; with its module's text."""
  fn = jax.jit(lambda v, x, c, lengths: m.apply(v, x, c, lengths))
  exported = jax.export.export(fn)(v, *shapes)
  restored = jax.export.deserialize(exported.serialize())
  return restored, exported.mlir_module()


@matrix
def test_export(kind, path):
  def run(m, v):
    restored, text = _exported(m, v, m.x, m.carry, LENGTHS)
    assert not _kernel_calls(text)  # no kernel built for this machine inside
    return restored.call(v, m.x, m.carry, LENGTHS)

  _check(kind, path, run, independent=lambda m, v: m.apply(v, m.x, m.carry))


@matrix
def test_export_with_symbolic_batch_and_time(kind, path):
  """Exported once for any batch and length; called with two shapes."""
  def run(m, v):
    b, t = jax.export.symbolic_shape('b, t')
    shapes = (jax.ShapeDtypeStruct((b, t, F), jnp.float32),
              jax.tree.map(lambda a: jax.ShapeDtypeStruct((b, H), a.dtype), m.carry),
              jax.ShapeDtypeStruct((b,), jnp.int32))
    restored, _ = _exported(m, v, *shapes)
    small = jax.tree.map(lambda a: a[:2], (m.x[:, :4], m.carry, jnp.minimum(LENGTHS[:2], 4)))
    return (restored.call(v, m.x, m.carry, LENGTHS), restored.call(v, *small))

  def direct(m, v):
    small = jax.tree.map(lambda a: a[:2], (m.x[:, :4], m.carry, jnp.minimum(LENGTHS[:2], 4)))
    return m.apply(v, m.x, m.carry), m.apply(v, *small)

  _check(kind, path, run, independent=direct)


@pytest.mark.parametrize('path', [_on_path(path, path=path, id=path) for path in PATHS])
@pytest.mark.parametrize('platform', ['cpu', 'cuda', 'tpu'])
def test_training_step_lowers_for_each_platform(path, platform):
  """A StackedLSTM training step traced on this CPU host lowers for every platform; only the CPU
  module calls the kernel, and only on the kernel's path."""
  model, variables = _setup('stack')

  def lowered(m, v):
    step = jax.jit(jax.value_and_grad(m.loss))
    return step.trace(v, m.x, m.carry).lower(lowering_platforms=(platform,)).as_text()

  calls = _kernel_calls(_on(path, lowered, model, variables))
  assert calls == ({'stacked_lstm_forward', 'stacked_lstm_backward'}
                   if platform == 'cpu' and path == 'kernel' else set())


def test_a_program_lowered_for_cpu_and_cuda_at_once_keeps_the_kernel_on_cpu_only():
  model, variables = _setup('stack')
  exported = jax.export.export(jax.jit(model.apply), platforms=('cpu', 'cuda'))(
      variables, model.x, model.carry, LENGTHS)
  assert not _kernel_calls(exported.mlir_module())
  got = exported.call(variables, model.x, model.carry, LENGTHS)
  with fast.reference_path():
    want = model.apply(variables, model.x, model.carry)
  _assert_trees_close(got, want)


def test_the_kernel_path_runs_the_kernel_in_a_cpu_training_step():
  """The matrix's kernel rows run the kernel: the compiled CPU step calls it."""
  model, variables = _setup('stack')
  text = jax.jit(jax.grad(model.loss)).lower(variables, model.x, model.carry).as_text()
  assert _kernel_calls(text) == {'stacked_lstm_forward', 'stacked_lstm_backward'}


def test_nn_scan_over_layers_under_shard_map():
  """`scan_layers` (nn.scan over the layer axis) inside shard_map with check_vma."""
  model = StackedLSTM(num_layers=3, hidden_size=H, scan_layers=True)
  x = jax.random.normal(jax.random.key(0), (B, T, F))
  variables = model.init(jax.random.key(1), x)
  loss = lambda v, x: jnp.sum(model.apply(v, x, LENGTHS)[0] ** 2)
  mesh = jax.make_mesh((1,), ('data',))
  step = jax.shard_map(lambda v, x: jax.lax.psum(jax.grad(loss)(v, x), 'data'), mesh=mesh,
                       in_specs=(PartitionSpec(), PartitionSpec('data')),
                       out_specs=PartitionSpec())
  got = _jit(step)(variables, jax.device_put(x, NamedSharding(mesh, PartitionSpec('data'))))
  with fast.reference_path():
    want = jax.grad(loss)(variables, x)
  _assert_trees_close(got, want)
