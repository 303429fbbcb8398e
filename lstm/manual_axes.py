"""Varying manual axes under `jax.shard_map(..., check_vma=True)`: what the fast path's custom
rules need so that their inputs agree and their cotangents have their primals' types.

Outside `shard_map` every array varies over no axis and these functions return their inputs.
"""
from __future__ import annotations

import jax


def varying(a) -> frozenset:
  """The manual mesh axes over which `a` varies (empty outside `shard_map`)."""
  aval = jax.typeof(a)
  mat = getattr(aval, 'mat', None)  # jax >= 0.10 keeps them in the manual axis type
  if mat is not None:
    return frozenset(mat.varying)
  return frozenset(getattr(aval, 'vma', ()))


def vary(a, axes) -> jax.Array:
  """`a` made to vary over `axes` too (a no-op for the axes it already varies over)."""
  missing = tuple(sorted(frozenset(axes) - varying(a), key=str))
  if a is None or not missing:
    return a
  if hasattr(jax.lax, 'pcast'):
    return jax.lax.pcast(a, missing, to='varying')
  return jax.lax.pvary(a, missing)  # jax < 0.8.2


def vary_together(*arrays):
  """`arrays` (None kept) made to vary over the union of their axes, as one primitive needs."""
  axes = frozenset().union(*(varying(a) for a in arrays if a is not None))
  return tuple(None if a is None else vary(a, axes) for a in arrays)
