"""lstm.memory: with freed memory kept, writing a new large buffer every step stops page-faulting."""
import subprocess
import sys

from tests.trainer_utils import ROOT

_PROGRAM = '''
import resource, sys
from lstm import memory
if sys.argv[1] == 'keep':
  assert memory.keep_freed_memory() and memory.keep_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
  a = bytearray(32 << 20)  # 32 MiB from malloc, zeroed (written) in full, then freed
  del a
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''


def _faults(mode: str) -> int:
  out = subprocess.run([sys.executable, '-c', _PROGRAM, mode], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, check=True)
  return int(out.stdout.strip())


def test_kept_memory_is_reused_instead_of_faulted_in_again():
  released, kept = _faults('release'), _faults('keep')
  pages = (32 << 20) // 4096
  assert released > 5 * pages  # glibc's default: every buffer's pages are new
  assert kept < 2 * pages  # the first buffer's pages, then the same ones again
