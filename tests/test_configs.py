"""Every config file loads, passes the config checks and opens with the command that runs it;
configs written with the fields of earlier versions (configs/common.py's LEGACY: config.json files,
the committed runs under results/, command-line flags) read as today's fields."""
import glob
import importlib
import os

import pytest

from configs import common
from train import cli, data, files, validation, workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                      if not os.path.basename(p).startswith(('_', 'common')))


@pytest.mark.parametrize('name', CONFIG_FILES)
def test_config_file(name):
  module = importlib.import_module(f'configs.{name}')
  assert f'--config=configs/{name}.py' in module.__doc__
  validation.check_config(module.get_config())


@pytest.mark.parametrize('arg', ['small', 'medium', 'large'])
def test_zaremba_sizes(arg):
  from configs import zaremba
  c = zaremba.get_config(arg)
  validation.check_config(c)
  assert c.model.forget_bias == 0.0 and c.optimizer.name == 'sgd' and c.batch_size == 20


def test_stack_variants_and_bad_argument():
  from configs import stack
  c = stack.get_config('layers=4,between=relu')
  assert (c.model.num_layers, c.model.between) == (4, 'relu')
  assert stack.get_config('full').num_epochs > 0
  with pytest.raises(ValueError, match="config argument 'layer' is not known; valid: layers"):
    stack.get_config('layer=4')


@pytest.mark.parametrize('name, arg, options', [
    ('ablation', 'speach', 'ptb, mnist1d'), ('study', 'ptb_wide', 'mnist1d, ptb, speech'),
    ('study_blocks', 'mnist1d', 'ptb, ptb_long, ptb_wide, speech'), ('zaremba', 'huge', 'small, medium, large')])
def test_a_config_argument_that_names_nothing_says_what_would(name, arg, options):
  module = importlib.import_module(f'configs.{name}')
  for function in ('get_config', 'get_sweep'):
    if hasattr(module, function):
      with pytest.raises(ValueError) as error:
        getattr(module, function)(arg)
      assert str(error.value) == f'configs/{name}.py:{arg} is not known; use one of {options}'


def test_parse_arg_types():
  args = common.parse_arg('a=3,b=0.5,c=relu,d', a=1, b=0.1, c='none', d=False)
  assert (args.a, args.b, args.c, args.d) == (3, 0.5, 'relu', True)


# A value of every field of configs/common.py's LEGACY, as a config.json of an earlier version
# holds it, and what today's config reads from it.
OLD = {'task': 'copy', 'num_steps': 32, 'optimizer.loss_reduction': 'sequence',
       'model.residual': True, 'data.num_train': 77, 'data.num_valid': 11, 'data.num_test': 12}
TODAY = {'dataset': 'copy', 'bptt_length': 32, 'loss_reduction': 'sequence',
         'model.block': 'residual_op_on_skip', 'data.copy.num_train': 77,
         'data.copy.num_valid': 11, 'data.copy.num_test': 12}


def test_old_fields_read_as_todays_and_back():
  assert set(OLD) == set(common.LEGACY)  # every legacy field has its case here
  config = workdir_lib.config_from_dict(files.unflatten(OLD), 'config.json')
  flat = files.flatten(config.to_dict())
  assert {key: flat[key] for key in TODAY} == TODAY
  assert not set(OLD) & set(flat)
  assert {key: common.read_legacy(config, key) for key in OLD} == OLD
  # today's field beside the old one wins
  both = files.unflatten({'num_steps': 32, 'bptt_length': 16, 'task': 'copy', 'dataset': 'adding'})
  assert (lambda c: (c.bptt_length, c.dataset))(workdir_lib.config_from_dict(both, 'x')) == \
      (16, 'adding')
  # split sizes given beside a dataset that never read them (a language model's) had no effect
  lm = workdir_lib.config_from_dict({'task': 'ptb_char', 'data': {'num_train': 77}}, 'x')
  assert lm.to_dict() == workdir_lib.config_from_dict({'dataset': 'ptb_char'}, 'x').to_dict()


def test_every_committed_config_json_loads_with_todays_reader():
  """Every run under results/ (written with the field names of its day) reads as a config of
  today that passes the config checks; the Graves runs' data.num_train / num_valid / num_test are
  their speech data's split sizes."""
  paths = sorted(glob.glob(os.path.join(ROOT, 'results', '**', 'config.json'), recursive=True))
  assert len(paths) > 800
  for path in paths:
    config = workdir_lib.read_config(os.path.dirname(path))
    assert config.dataset in data.DATASETS, path
    validation.check_config(config)
  graves = workdir_lib.read_config(os.path.join(ROOT, 'results', 'graves_l3'))
  speech = graves.data.speech_digits
  assert (speech.num_train, speech.num_valid, speech.num_test) == (4000, 300, 500)


def test_old_field_flags_set_todays_fields():
  """`--config.OLD=V` sets today's fields in its place, as config.json is read; a flag of
  today's field wins; a value the old field could not hold is one line."""
  spec = '--config=' + os.path.join(ROOT, 'configs', 'stack.py')
  argv = ['main.py', spec, '--config.task=text', '--config.num_steps=32', '--config.seed=3',
          '--config.optimizer.loss_reduction=sequence', '--config.model.residual',
          '--config.bptt_length=16']
  assert cli.upgrade_flags(argv) == (
      ['main.py', spec, '--config.dataset=text', '--config.seed=3',
       '--config.loss_reduction=sequence', '--config.model.block=residual_op_on_skip',
       '--config.bptt_length=16'], None)
  assert cli.upgrade_flags(['main.py', spec, '--noconfig.model.residual']) == (
      ['main.py', spec], None)
  both = ['--config.data.num_train=77', '--config.task=copy']
  assert cli.upgrade_flags(['main.py', spec, *both])[0] == [
      'main.py', spec, '--config.data.copy.num_train=77', '--config.dataset=copy']
  bad = ['main.py', spec, '--config.num_steps=abc']
  assert cli.upgrade_flags(bad) == (
      bad, "--config.num_steps=abc: config.num_steps (an old field) is an integer, not 'abc'")
