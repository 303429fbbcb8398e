"""The API reference builds from the docstrings with every warning an error, and has a page for
every module of `lstm` and `train`. (The code blocks of README.md and docs/ are run by the
conftest.py at the repository's root.)"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow  # imports every module of the project: about a minute on 2 cores


def _build_api():
  spec = importlib.util.spec_from_file_location('build_api', os.path.join(ROOT, 'docs', 'build_api.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_the_api_reference_builds_a_page_for_every_module(tmp_path):
  done = subprocess.run([sys.executable, os.path.join(ROOT, 'docs', 'build_api.py'),
                         '--out', str(tmp_path)], capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  names = _build_api().modules()
  assert {'lstm.interop', 'lstm.fast', 'train.sweep', 'train.data.text'} <= set(names)
  for name in names:
    page = tmp_path.joinpath(*name.split('.')).with_suffix('.html')
    assert page.is_file(), f'no page for {name}'
  assert 'from_torch' in tmp_path.joinpath('lstm', 'interop.html').read_text()
