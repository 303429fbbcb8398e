"""The project's cache directory: `$STACKED_LSTM_CACHE`, else `~/.cache/stacked_lstm`.

What is kept there can always be made again: the inference loop orders measured on this machine
(`lstm.loop_order`) and the trainer's generated or encoded data.
"""
import os

ENV = 'STACKED_LSTM_CACHE'


def directory() -> str:
  """The cache directory (not created here)."""
  return os.environ.get(ENV) or os.path.join(os.path.expanduser('~'), '.cache', 'stacked_lstm')
