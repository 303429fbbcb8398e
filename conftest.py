"""Runs every code block of README.md and docs/*.md as a test (Sybil), so the docs cannot rot.

Each page runs in a scratch directory of its own that sees the clone's code (main.py, configs/,
lstm/, train/, bench/, results/, LICENSE as links), so `runs/...` paths land there. Python blocks
run in one namespace per page, in this process; bash blocks run in `bash -euo pipefail` with the
running interpreter first on PATH as `python`, and are in the slow set (each starts programs).
A block that cannot run here is preceded by `<!-- skip: next "reason" -->`; a hidden setup block
by `<!-- invisible-code-block: python ... -->`.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest
from sybil import Sybil
from sybil.evaluators.skip import Skipper
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser, SkipParser

ROOT = pathlib.Path(__file__).resolve().parent
# What a page's commands read from the clone.
LINKED = ('main.py', 'configs', 'lstm', 'train', 'bench', 'results', 'LICENSE', 'pyproject.toml')
BASH_TIMEOUT_S = 600


def _setup(namespace):
  """Moves into a fresh scratch directory linked to the clone; remembers where it came from."""
  scratch = pathlib.Path(tempfile.mkdtemp(prefix='docs_'))
  for name in LINKED:
    (scratch / name).symlink_to(ROOT / name)
  namespace['_scratch'], namespace['_cwd'] = scratch, os.getcwd()
  os.chdir(scratch)


def _teardown(namespace):
  os.chdir(namespace['_cwd'])
  shutil.rmtree(namespace['_scratch'], ignore_errors=True)


class BashEvaluator:
  """Runs a bash block in the page's scratch directory; a non-zero exit fails with its output."""

  def __call__(self, example):
    env = dict(os.environ)
    bin_dir = pathlib.Path(tempfile.mkdtemp(prefix='docs_bin_'))
    wrapper = bin_dir / 'python'  # by its own path, so that a virtual environment stays active
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    env['PATH'] = f'{bin_dir}{os.pathsep}{env.get("PATH", "")}'
    try:
      done = subprocess.run(['bash', '-euo', 'pipefail', '-c', example.parsed], env=env,
                            cwd=example.namespace['_scratch'], capture_output=True, text=True,
                            timeout=BASH_TIMEOUT_S, stdin=subprocess.DEVNULL)
    finally:
      shutil.rmtree(bin_dir, ignore_errors=True)
    if done.returncode:
      return (f'exit status {done.returncode}\n--- stdout\n{done.stdout[-3000:]}\n'
              f'--- stderr\n{done.stderr[-3000:]}')
    return None


pytest_collect_file = Sybil(
    parsers=[SkipParser(), PythonCodeBlockParser(),
             CodeBlockParser(language='bash', evaluator=BashEvaluator())],
    patterns=['README.md', 'docs/*.md'], excludes=['*/*/README.md', 'results/*', 'bench/*'],
    setup=_setup, teardown=_teardown,
).pytest()


def _evaluator(item):
  region = getattr(getattr(item, 'example', None), 'region', None)
  return None if region is None else region.evaluator


def pytest_collection_modifyitems(items):
  """A page's bash blocks start programs (trainings, sweeps): they are in the slow set, and so is
  a skip directive right before one (its state would otherwise pass on to the next block)."""
  for item, after in zip(items, items[1:] + [None]):
    if isinstance(_evaluator(item), BashEvaluator) or (
        isinstance(_evaluator(item), Skipper) and after is not None
        and after.fspath == item.fspath and isinstance(_evaluator(after), BashEvaluator)):
      item.add_marker(pytest.mark.slow)
