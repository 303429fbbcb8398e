"""Shared test set-up: Keras runs on the JAX backend; float32 matmuls at full precision; the
inference loop order by the size rule; the project's cache directory in a temporary directory, not
the user's; the `fast_calls` fixture; `trained_run`, tiny runs trained once per session."""
import os

os.environ.setdefault('KERAS_BACKEND', 'jax')
# The suite runs both inference loop orders explicitly (tests/test_fast.py) and tests the measured
# choice on its own (tests/test_loop_order.py); elsewhere the size rule keeps runs reproducible.
os.environ.setdefault('LSTM_LOOP_ORDER', 'rule')

import jax  # noqa: E402
import pytest  # noqa: E402

from lstm import cache, fast  # noqa: E402

jax.config.update('jax_default_matmul_precision', 'highest')


@pytest.fixture(scope='session', autouse=True)
def cache_directory(tmp_path_factory):
  """The project's cache directory (speech features, encoded text) in the session's temporary
  directory, unless $STACKED_LSTM_CACHE names one; the programs that tests start inherit it."""
  os.environ.setdefault(cache.ENV, str(tmp_path_factory.mktemp('cache')))
  return os.environ[cache.ENV]


@pytest.fixture
def fast_calls(monkeypatch):
  """Counts the layers that took the fast path while tracing."""
  calls = []
  original = fast.run_layer

  def counting(*args, **kwargs):
    calls.append(1)
    return original(*args, **kwargs)

  monkeypatch.setattr(fast, 'run_layer', counting)
  return calls


@pytest.fixture(scope='session')
def trained_run(tmp_path_factory):
  """`trained_run(name)`: the workdir of the tiny run `name` of `trainer_utils.RUNS`, trained
  the first time a test asks for it."""
  from tests import trainer_utils
  from train import trainer

  workdirs = {}

  def get(name):
    if name not in workdirs:
      directory = tmp_path_factory.mktemp(name)
      config = trainer_utils.run_config(name, str(directory))
      trainer.train_and_evaluate(config, str(directory / 'run'))
      workdirs[name] = str(directory / 'run')
    return workdirs[name]
  return get
