"""The code's shape: no import circle, short functions in train/, every config field the code
reads declared in configs/common.py (so that every field can be set from the command line), and
results/README.md indexing every folder of results/."""
import ast
import glob
import os
import re

import ml_collections
import pytest

from configs import common
from train import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = ('lstm', 'train', 'configs')

# Names that hold a training config or one of its sections wherever they appear in the code.
CONFIG_ROOTS = {'config': (), 'data_config': ('data',), 'model_config': ('model',),
                'opt_config': ('optimizer',)}
CONFIG_METHODS = {'to_json_best_effort', 'to_json', 'to_dict', 'lock', 'unlock', 'items', 'keys',
                  'values', 'update', 'copy_and_resolve_references'}
GET_ALLOWED = ('train/validation.py',)  # validation may probe fields that a config may lack


def _sources(*patterns):
  return sorted({p for pattern in patterns for p in glob.glob(os.path.join(ROOT, pattern),
                                                              recursive=True)})


def _module_name(path):
  rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
  return rel[:-len('.__init__')] if rel.endswith('.__init__') else rel


# ------------------------------------------------------------------------------------------------
# Imports


def _imports(path, modules):
  """Project modules that `path` imports (at any depth of the file, function bodies included)."""
  out = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name.split('.')[0] in PROJECT)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
        and node.module.split('.')[0] in PROJECT:
      for alias in node.names:
        child = f'{node.module}.{alias.name}'
        out.add(child if child in modules else node.module)
  return {m for m in out if m in modules}


def _cycles(graph):
  cycles, state = [], {}

  def visit(node, path):
    state[node] = 'open'
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 'open':
        cycles.append(path[path.index(nxt):] + [nxt])
      elif nxt not in state:
        visit(nxt, path + [nxt])
    state[node] = 'done'

  for node in sorted(graph):
    if node not in state:
      visit(node, [node])
  return cycles


def test_no_import_circle():
  paths = _sources('lstm/**/*.py', 'train/**/*.py', 'configs/*.py', 'main.py')
  modules = {_module_name(p): p for p in paths}
  graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
  assert graph['train.trainer'] and graph['train.data.batcher']  # the walk sees imports
  assert not _cycles(graph), _cycles(graph)


def test_cycle_finder_finds_a_cycle():
  assert _cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': set()}) == [['a', 'b', 'c', 'a']]


def test_no_function_in_train_is_over_80_lines():
  long = []
  for path in _sources('train/**/*.py'):
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        lines = node.end_lineno - node.lineno + 1
        if lines > 80:
          long.append(f'{os.path.relpath(path, ROOT)}:{node.lineno} {node.name} ({lines} lines)')
  assert not long


# ------------------------------------------------------------------------------------------------
# Config reads


def _chain(node, aliases):
  """The config path an expression names (a tuple of field names), or None."""
  if isinstance(node, ast.Name):
    return aliases.get(node.id, CONFIG_ROOTS.get(node.id))
  if isinstance(node, ast.Attribute):
    base = _chain(node.value, aliases)
    return None if base is None else base + (node.attr,)
  if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
      and isinstance(node.slice.value, str):
    base = _chain(node.value, aliases)
    return None if base is None else base + (node.slice.value,)
  return None


def _declared(config, path):
  node = config
  for part in path:
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False
    node = node[part]
  return True


def config_read_problems(source, where, config, allow_get=False, reads=None):
  """Reads of config fields in `source` that `config` does not declare, and .get() calls on
  config objects (unless `allow_get`); every field read is added to the set `reads`."""
  problems = []
  reads = set() if reads is None else reads
  functions = (ast.FunctionDef, ast.AsyncFunctionDef)

  def own_nodes(body_nodes):
    """The nodes of a scope, not those of the functions defined in it."""
    stack = list(body_nodes)
    while stack:
      node = stack.pop()
      yield node
      if not isinstance(node, functions):
        stack.extend(ast.iter_child_nodes(node))

  def scan(body_nodes, aliases):
    aliases = dict(aliases)
    for sub in own_nodes(body_nodes):
      if isinstance(sub, ast.Assign) and len(sub.targets) == 1 \
          and isinstance(sub.targets[0], ast.Name):
        path = _chain(sub.value, aliases)
        if path is not None:
          aliases[sub.targets[0].id] = path
    for sub in own_nodes(body_nodes):
      if isinstance(sub, ast.Attribute):
        base = _chain(sub.value, aliases)
        if base is None or not _declared(config, base):
          continue
        line = f'{where}:{sub.lineno}'
        if sub.attr == 'get':
          if not allow_get:
            problems.append(f'{line}: .get() on config.{".".join(base)}')
        elif sub.attr not in CONFIG_METHODS:
          reads.add('.'.join(base + (sub.attr,)))
          if not _declared(config, base + (sub.attr,)):
            problems.append(f'{line}: config.{".".join(base + (sub.attr,))} is not declared')
    for sub in own_nodes(body_nodes):
      if isinstance(sub, functions):
        scan(sub.body, aliases)

  scan(ast.parse(source).body, {})
  return sorted(set(problems))


def test_every_config_field_the_code_reads_is_declared():
  config = common.base_config()
  problems, reads = [], set()
  for path in _sources('train/**/*.py', 'main.py'):
    rel = os.path.relpath(path, ROOT)
    problems += config_read_problems(open(path).read(), rel, config,
                                     allow_get=rel in GET_ALLOWED, reads=reads)
  assert not problems
  # the walk follows the code's names for config sections
  assert {'optimizer.b1', 'optimizer.initial_accumulator', 'model.bilm', 'data.mnist1d.seed',
          'data.speech_digits.voices', 'data.valid_fraction', 'stop_after_steps'} <= reads


def test_the_read_walk_finds_undeclared_fields_and_get():
  source = '''
def f(config, opt_config):
  m = config.model
  x = m.hidden_size + m.hiden_size
  o = opt_config
  y = o.b1, o.b3, config.optimizer.get('b1', 0.9)
  def inner():
    return config.data.mnist1d.seed, config.data.mnist1d.sed, config.to_json_best_effort()
'''
  assert config_read_problems(source, 'x.py', common.base_config()) == [
      'x.py:4: config.model.hiden_size is not declared',
      'x.py:6: .get() on config.optimizer',
      'x.py:6: config.optimizer.b3 is not declared',
      'x.py:8: config.data.mnist1d.sed is not declared',
  ]


def test_stack_fields_are_declared():
  model = common.base_config().model
  assert [f for f in models.STACK_FIELDS if f not in model] == []


@pytest.mark.parametrize('path', _sources('configs/*.py'))
def test_config_files_set_only_declared_fields(path):
  """A config file that sets a field common.base_config() lacks would add it silently."""
  name = os.path.basename(path)[:-3]
  if name in ('__init__', 'common'):
    return
  import importlib
  module = importlib.import_module(f'configs.{name}')
  declared = set(_leaves(common.base_config()))
  assert set(_leaves(module.get_config())) <= declared


def _leaves(config, prefix=''):
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, f'{prefix}{key}.')
    else:
      yield prefix + key


def test_results_readme_indexes_every_folder():
  """results/README.md names every folder under results/ (what it answers, its config and
  command), and no folder that is not there."""
  results = os.path.join(ROOT, 'results')
  text = open(os.path.join(results, 'README.md')).read()
  folders = {name for name in os.listdir(results) if os.path.isdir(os.path.join(results, name))}
  assert len(folders) > 10
  first_cells = [line.split('|')[1] for line in text.splitlines() if line.startswith('| `')]
  indexed = {name for cell in first_cells for name in re.findall(r'`([\w.-]+)/`', cell)}
  assert folders == indexed


def test_every_interval_the_readmes_answer_quotes_is_in_a_committed_report():
  """Each 95% interval in the README's answer and its results table ('[-5.43, -2.82]') is one
  that a committed report.md or family.md under results/ prints, sign for sign."""
  readme = open(os.path.join(ROOT, 'README.md')).read()
  answer = readme.split('**The answer so far**')[1].split('\n## ')[0]
  table = readme.split('\n## Results at a glance')[1].split('\n## ')[0]
  reports = [open(p).read() for p in glob.glob(os.path.join(ROOT, 'results', '**', '*.md'),
                                                recursive=True)
             if os.path.basename(p) in ('report.md', 'family.md')]
  quoted = re.findall(r'\[[-+]?\d+\.\d+, [-+]?\d+\.\d+\]', answer + table)
  assert len(quoted) >= 10
  # the reports sign both ends ('[+0.14, +2.60]'); the README may leave a leading + off
  signed = lambda x: x if x[0] in '+-' else '+' + x
  for interval in quoted:
    low, high = interval[1:-1].split(', ')
    written = f'[{signed(low)}, {signed(high)}]'
    assert any(written in text for text in reports), interval
