"""lstm.memory: with freed memory kept, writing a new large buffer every step stops page-faulting."""
import subprocess
import sys

import pytest

from tests.trainer_utils import ROOT

pytestmark = pytest.mark.slow  # real processes measuring page faults

_PROGRAM = '''
import resource, sys, threading
from lstm import memory
if sys.argv[1] == 'keep':
  assert memory.keep_freed_memory() and memory.keep_freed_memory()
size = int(sys.argv[2]) << 20


def allocate():
  for _ in range(10):
    a = bytearray(size)  # from malloc, zeroed (written) in full, then freed
    del a

before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
if sys.argv[3] == 'thread':  # as XLA:CPU's threads allocate
  worker = threading.Thread(target=allocate)
  worker.start()
  worker.join()
else:
  allocate()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''


def _faults(mode: str, mib: int, where: str) -> int:
  out = subprocess.run([sys.executable, '-c', _PROGRAM, mode, str(mib), where], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, check=True)
  return int(out.stdout.strip())


@pytest.mark.parametrize('mib,where', [(32, 'main'), (96, 'thread')])
def test_kept_memory_is_reused_instead_of_faulted_in_again(mib, where):
  """96 MiB in a thread: over the 64 MiB a thread's own arena can hold, which glibc serves
  with mmap (a fresh fault per page each time) unless every thread shares the main arena."""
  released, kept = _faults('release', mib, where), _faults('keep', mib, where)
  pages = (mib << 20) // 4096
  assert released > 5 * pages  # glibc's default: every buffer's pages are new
  assert kept < 2 * pages  # the first buffer's pages, then the same ones again
