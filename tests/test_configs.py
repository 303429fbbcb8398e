"""Every config file loads, passes the config checks and opens with the command that runs it."""
import glob
import importlib
import os

import pytest

from configs import common
from train import validation

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


def test_parse_arg_types():
  args = common.parse_arg('a=3,b=0.5,c=relu,d', a=1, b=0.1, c='none', d=False)
  assert (args.a, args.b, args.c, args.d) == (3, 0.5, 'relu', True)
