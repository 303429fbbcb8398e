"""Command-line start-up shared by main.py and the train.* tools: flag errors as one line, and
the flags of the tools that work on a trained run.

`app.run(main, flags_parser=cli.parse_flags)` parses the flags (`run(main)` does that too and
prints a ConfigError or a `faults.RunFault` from `main` as one line, exit status 1; a Ctrl-C as
one line, status 130; a closed stdout pipe quietly, status 141); `output(text)` is how the tools
print, so that a failed write to stdout is one line too. Any error in the flags (an unknown
flag or config field, a value of the wrong type, a config file that does not exist or whose
argument is not known) ends the program with one line on stderr naming the flag, what is wrong
and the closest valid names, and exit status 2 (absl's status for flag errors), instead of a
traceback. A flag of a config field renamed since (configs/common.py's LEGACY, e.g.
`--config.task=text`) sets today's fields, as a config.json of an earlier version is read.
"""
from __future__ import annotations

import difflib
import glob
import importlib.util
import os
import sys
from typing import Any, Callable, Iterator, Optional

import ml_collections
from absl import app, flags

from train import files

USAGE_ERROR = 2
INTERRUPTED = 130  # 128 + SIGINT, as shells report a program that Ctrl-C ended
PIPE_CLOSED = 141  # 128 + SIGPIPE
FLAGS = flags.FLAGS
_TRUE, _FALSE = ('true', 't', '1', 'yes'), ('false', 'f', '0', 'no')


def define_run_flags() -> None:
  flags.DEFINE_string('workdir', None, 'The run directory (what main.py trained).')
  flags.DEFINE_string('step', 'latest', 'The checkpoint: latest, best, or a step number.')
  flags.mark_flags_as_required(['workdir'])


def no_arguments(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}; every option is a --flag')


def run(main: Callable) -> None:
  """`app.run(main)` with flag errors, and a ConfigError or RunFault from `main`, as one line
  (exit status 1). A Ctrl-C that `main` does not handle is one line too (status 130); a reader
  of stdout that goes away (`| head`) ends the program quietly with status 141, as SIGPIPE ends
  other tools."""
  from train import faults, metrics
  from train.validation import ConfigError

  def guarded(argv):
    metrics.quiet_library_logs()
    try:
      main(argv)
      output('', newline=False)
    except BrokenPipeError:
      _discard_stdout()
      sys.exit(PIPE_CLOSED)
    except (ConfigError, faults.RunFault) as e:
      sys.exit(f'error: {e}')
    except KeyboardInterrupt:
      sys.stderr.write('error: interrupted (Ctrl-C)\n')
      sys.exit(INTERRUPTED)
  app.run(guarded, flags_parser=parse_flags)


def _discard_stdout() -> None:
  """Points stdout at /dev/null, so that what is still buffered is not written again at exit."""
  os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def output(text: str, newline: bool = True) -> None:
  """Writes `text` (and a newline) to stdout and flushes it. A closed pipe raises
  BrokenPipeError (`run` ends quietly); any other failed write raises RunFault('could not write
  to standard output: [Errno 28] No space left on device')."""
  from train import faults
  try:
    sys.stdout.write(text + ('\n' if newline else ''))
    sys.stdout.flush()
  except BrokenPipeError:
    raise
  except OSError as e:
    _discard_stdout()
    raise faults.RunFault('could not write to standard output: '
                          f'{faults.describe_os_error(e)}') from None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flags_parser: the parsed FLAGS (old config fields' flags read as `upgrade_flags`
  reads them), or one error line and exit status 2."""
  upgraded, problem = upgrade_flags(argv)
  if problem:
    sys.stderr.write(f'error: {problem}\n')
    sys.exit(USAGE_ERROR)
  if upgraded != argv:
    argv = sys.argv = upgraded  # ml_collections' config flag reads its overrides from sys.argv
  try:
    rest = flags.FLAGS(argv)
    if 'config' in flags.FLAGS and flags.FLAGS['config'].value is not None:
      flags.FLAGS['config'].value.keys()  # a config file that failed to load raises only here
    return rest
  except Exception as e:  # noqa: BLE001 - flags and config loading raise many kinds
    sys.stderr.write(f'error: {flag_error(argv, e)}\n')
    sys.exit(USAGE_ERROR)


def flag_error(argv: list[str], error: Exception, config_flag: str = 'config') -> str:
  """One line that says what is wrong with the flags in `argv` (`error` is what parsing raised)."""
  spec = _flag_value(argv, config_flag)
  if spec is not None:
    config, problem = load_config(spec, config_flag)
    if problem:
      return problem
    for path, value in _overrides(argv, config_flag):
      problem = override_problem(config, path, value, config_flag)
      if problem:
        return problem
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return lines[0] if lines else type(error).__name__


def format_value(value) -> str:
  """A value as a command-line flag reads it (and as sweep workdir names show it)."""
  return value if isinstance(value, str) else repr(value)


def upgrade_flags(argv: list[str], name: str = 'config') -> tuple[list[str], Optional[str]]:
  """(`argv` with each --name.FIELD=VALUE of an old field, one of configs/common.py's LEGACY,
  replaced in its place by the flags of today's fields it amounts to, as a config.json of an
  earlier version is read; a flag of today's field itself wins), or (argv, one line) for a value
  that the old field could not hold. `--config.task=text` -> `--config.dataset=text`."""
  from configs import common
  old = []  # (index in argv, old field, its value as written)
  for i, arg in enumerate(argv):
    for prefix, bare in ((f'--{name}.', None), (f'--no{name}.', 'false')):
      path, eq, value = arg[len(prefix):].partition('=')
      if arg.startswith(prefix) and path in common.LEGACY:
        old.append((i, path, value if eq else bare))
  spec = _flag_value(argv, name)
  config = None if not old or spec is None else load_config(spec, name)[0]
  if config is None:
    return argv, None  # the parser reports what is wrong with the config flag
  values = {}
  for i, path, text in old:
    values[i], problem = _old_value(text, common.read_legacy(config, path))
    if problem:
      return argv, f'{argv[i]}: {name}.{path} (an old field) {problem}'
  within = files.flatten(config.to_dict())
  within.update(common.upgrade({path: values[i] for i, path, _ in old}, within))
  given = {path for path, _ in _overrides(argv, name)}
  replaced = {i: [f'--{name}.{key}={format_value(new)}'
                  for key, new in common.upgrade({path: values[i]}, within).items()
                  if key not in given] for i, path, _ in old}
  return [arg for i, arg in enumerate(argv) for arg in replaced.get(i, [arg])], None


def _old_value(text: Optional[str], like) -> tuple[Any, Optional[str]]:
  """(the value of an old field's flag, None), or (None, what is wrong with it: 'is an integer,
  not ...'). `text`: what follows '=' (None for --name.FIELD, 'false' for --noname.FIELD);
  `like`: a value of the old field's type (None: the text as it is)."""
  if isinstance(like, bool):
    low = (text or 'true').lower()
    if low not in _TRUE + _FALSE:
      return None, f'is true or false, not {text!r}'
    return low in _TRUE, None
  if text is None:
    return None, 'needs a value'
  for kind, expected in ((int, 'an integer'), (float, 'a number')):
    if isinstance(like, kind):
      try:
        return kind(text), None
      except ValueError:
        return None, f'is {expected}, not {text!r}'
  return text, None


def _flag_value(argv: list[str], name: str) -> Optional[str]:
  for i, arg in enumerate(argv):
    if arg.startswith(f'--{name}='):
      return arg.split('=', 1)[1]
    if arg == f'--{name}' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _overrides(argv: list[str], name: str) -> Iterator[tuple[str, Optional[str]]]:
  """(field path, value) of each --name.PATH=VALUE (value None for --name.PATH / --noname.PATH)."""
  for arg in argv:
    for prefix in (f'--{name}.', f'--no{name}.'):
      if arg.startswith(prefix):
        path, eq, value = arg[len(prefix):].partition('=')
        yield path, (value if eq else None)


def load_config(spec: str, name: str = 'config') -> tuple[Any, Optional[str]]:
  """(config, None) from 'path.py[:arg]', or (None, the one-line problem)."""
  path, _, arg = spec.partition(':')
  where = f'--{name}={spec}'
  if not os.path.isfile(path):
    here = sorted(os.path.relpath(p) for p in glob.glob(os.path.join(os.path.dirname(path) or '.',
                                                                     '*.py')))
    near = difflib.get_close_matches(path, here, n=3, cutoff=0.5)
    hint = f'; did you mean {", ".join(near)}?' if near else (
        f'; config files there: {", ".join(here[:8])}' if here else '')
    return None, f'{where}: no such file{hint}'
  try:
    module_spec = importlib.util.spec_from_file_location('_config_file', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, 'get_config'):
      return None, f'{where}: {path} has no get_config() function'
    config = module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # noqa: BLE001 - the config file's own error, reported in one line
    message = str(e).strip().splitlines()
    return None, f'{where}: {message[0] if message else type(e).__name__}'
  return config, None


def _leaves(config, prefix: str = '') -> Iterator[str]:
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, f'{prefix}{key}.')
    else:
      yield prefix + key


def override_problem(config, path: str, value: Optional[str], name: str = 'config'
                     ) -> Optional[str]:
  """What is wrong with --name.PATH=VALUE for `config`, or None."""
  node, parts = config, path.split('.')
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      fields = list(_leaves(config))
      near = difflib.get_close_matches(path, fields, n=3, cutoff=0.6)
      if not near:
        near = [f for f in fields if f.split('.')[-1] in
                difflib.get_close_matches(parts[-1], [f.split('.')[-1] for f in fields], n=3)]
      hint = f'; did you mean {", ".join(f"{name}.{f}" for f in near[:3])}?' if near else ''
      return f'--{name}.{path}: {name} has no field {path!r}{hint}'
    if i < len(parts) - 1:
      node = node[part]
  if isinstance(node[parts[-1]], ml_collections.ConfigDict):
    return (f'--{name}.{path}: {name}.{path} is a group of fields, not one; set one of '
            + ', '.join(f'{name}.{path}.{k}' for k in list(node[parts[-1]].keys())[:6]))
  return _type_problem(node, parts[-1], path, value, name)


def _type_problem(node, field: str, path: str, value: Optional[str], name: str
                  ) -> Optional[str]:
  current = node[field]
  kind = node.get_ref(field).get_type() if current is None else type(current)
  flag = f'--{name}.{path}' + ('' if value is None else f'={value}')
  if value is None:
    return None if kind is bool else f'{flag}: needs a value, e.g. --{name}.{path}={current}'
  if kind is bool:
    ok = value.lower() in _TRUE + _FALSE
    expected = 'true or false'
  elif kind is int:
    ok = value.lstrip('+-').isdigit()
    expected = 'an integer'
  elif kind is float:
    try:
      float(value)
      ok = True
    except ValueError:
      ok = False
    expected = 'a number'
  else:
    return None
  if ok:
    return None
  example = '' if current is None else f', e.g. --{name}.{path}={current}'
  return f'{flag}: {name}.{path} is {expected}, not {value!r}{example}'
