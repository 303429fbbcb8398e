"""Thread-local switches that the library reads while code is traced (`lstm.fast`, `lstm.native`)."""
import contextlib
import threading


class Switch:
  """Off unless set within a `with switch.set(...)` block on this thread."""

  def __init__(self):
    self._local = threading.local()

  def on(self) -> bool:
    return getattr(self._local, 'on', False)

  @contextlib.contextmanager
  def set(self, on: bool = True):
    previous = self.on()
    self._local.on = on
    try:
      yield
    finally:
      self._local.on = previous
