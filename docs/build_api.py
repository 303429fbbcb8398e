"""Builds the API reference of every module of `lstm` and `train` from their docstrings (pdoc),
with every warning an error.

  python docs/build_api.py              # HTML in docs/api/ (open docs/api/index.html)
  python docs/build_api.py --out DIR

Two warnings of pdoc are not the project's docstrings and are let through, each by its message:
the annotations of jax's initialiser used as the cells' `bias_init` default (pdoc reads them in the
cell's module, where jax's own names are not), and those of the constructors of `CellWeights` and
`Noise`, which `typing.NamedTuple` generates outside the module that names `Array`.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import pkgutil
import sys
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('lstm', 'train')
LET_THROUGH = (
    r'Error parsing type annotation .* for lstm(\.stack|\.cell)?\.(LSTMCell|StackedLSTM|CellOptions)\.bias_init\.',
    r'Error parsing type annotation .* for lstm(\.cell)?\.(CellWeights|Noise)\.__init__\.',
)


def modules() -> list[str]:
  """Every module and package under PACKAGES, by dotted name, packages first."""
  if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
  names = []
  for package in PACKAGES:
    names.append(package)
    path = [os.path.join(ROOT, package)]
    names += [m.name for m in pkgutil.walk_packages(path, prefix=package + '.')]
  return names


def build(out: str) -> list[str]:
  """Writes the HTML reference to `out`; returns the modules documented. Raises on any warning
  but LET_THROUGH's."""
  import pdoc
  import pdoc.render

  import pdoc.extract

  pdoc.render.configure(docformat='google', search=True)
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    for message in LET_THROUGH:
      warnings.filterwarnings('ignore', message=message, category=UserWarning)
    # pdoc walks a package's submodules itself, except those its __all__ leaves out: name only
    # the modules a walk has not reached.
    specs, covered = [], set()
    for name in modules():
      if name not in covered:
        specs.append(name)
        covered.update(pdoc.extract.walk_specs([name]))
    pdoc.pdoc(*specs, output_directory=pathlib.Path(out))
  return sorted(covered)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', default=os.path.join(ROOT, 'docs', 'api'))
  out = parser.parse_args().out
  names = build(out)
  print(f'{len(names)} modules documented in {out}')


if __name__ == '__main__':
  main()
