"""A tiny character-level PTB run for the command-line tests.

  python main.py --config=tests/tiny_config.py --workdir=/tmp/tiny
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.trainer_utils import tiny_config  # noqa: E402


def get_config(arg=None):
  return tiny_config(arg or 'ptb_char')
