"""The between-layer ablation: what belongs between stacked LSTM layers?

  python -m train.sweep --config=configs/ablation.py:ptb --sweep_dir=runs/ablation_ptb
  python -m train.sweep --config=configs/ablation.py:mnist1d --sweep_dir=runs/ablation_mnist1d
  python -m train.report --sweep_dir=runs/ablation_ptb --out=results/ablation_ptb
  python -m train.report --sweep_dir=runs/ablation_mnist1d --out=results/ablation_mnist1d

One point by hand (what the sweep runs for it):

  python main.py --config=configs/ablation.py:ptb --workdir=runs/x \
      --config.model.between=relu --config.model.num_layers=4 --config.seed=1

Grid (`get_sweep`): model.between in {none, relu, tanh, gelu, layernorm} x model.num_layers in
{2, 4, 8} x seeds {0, 1, 2}, plus residual connections (model.residual=True) at 8 layers with
between none and layernorm: 17 settings, 51 runs per dataset. Everything else is the canonical
stack (tanh/sigmoid cell, forget bias 1, no dropout); Adam at 1e-2 (on ptb better than 3e-3 at
2 and 4 layers in a short check: 2.37 against 2.70 bpc, 2.68 against 3.04), 50 warm-up steps,
cosine decay, gradient norm clipped at 1.

- `:ptb`: character-level Penn Treebank, hidden 128, embedding 32, batch 32 x 64 steps, 500 steps
  (1M characters: the first `data.max_train_tokens`=1M of the training text, one epoch), validation
  and test on their first 50k characters. Metric: bits per character.
- `:mnist1d`: MNIST-1D (40 steps x 1 feature, 10 classes; 3,500 train / 500 valid / 1,000 test),
  hidden 64, batch 64, 1,000 steps (18 epochs). Metric: accuracy.

Cost. Wall time of single runs (start-up, compilation and evaluation included), measured on the
2-core CPU this was written on while other jobs shared it (load average 3 to 6, so +-30%):

  layers                    2       4       8
  ptb (500 steps)        50-55 s  96-152 s  154-227 s   (CPU time 48 s, 94 s, 199 s)
  mnist1d (1,000 steps)    58 s   90-112 s     195 s

Grid, one run after another (`--parallel=1`), with 55/120/200 s and 60/100/195 s:
  ptb      15 x 3 seeds x (55 + 120 + 200) s + 6 residual runs x 200 s = 6,825 s = 1.9 h
  mnist1d  15 x 3 seeds x (60 + 100 + 195) s + 6 residual runs x 195 s = 6,495 s = 1.8 h
  both about 3.7 h. A run keeps one core busy (CPU time = wall time when the machine is idle), so
  on an idle 2-core machine `--parallel=2` should take about half that; on a loaded one it gains
  nothing (two concurrent runs took 215 s against 112 s for one, at load average 5).

Small on purpose: the question is relative (does anything between layers help), and 3 seeds give
confidence intervals; the absolute numbers are far from those of converged models. In a check at
this budget (ptb, seed 0), 8 plain layers stayed at the unigram loss (4.34 bpc) for all 500 steps
(between none at lr 3e-3 and 1e-2, layernorm at 1e-2), while 8 residual layers reached 1.93 bpc
(2 plain layers: 2.37); on mnist1d 8 plain layers do train (86% test accuracy against 95% for 2).
"""
from configs import common

DATASETS = ('ptb', 'mnist1d')
BETWEEN = ['none', 'relu', 'tanh', 'gelu', 'layernorm']
DEPTHS = [2, 4, 8]
SEEDS = [0, 1, 2]


def _dataset(arg) -> str:
  name = (arg or 'ptb').strip()
  if name not in DATASETS:
    raise ValueError(f'configs/ablation.py:{name} is not known; use one of {", ".join(DATASETS)}')
  return name


def get_config(arg='ptb'):
  dataset = _dataset(arg)
  c = common.base_config()
  c.model.num_layers = 2
  c.model.between = 'none'
  c.optimizer.name = 'adam'
  c.optimizer.learning_rate = 1e-2
  c.optimizer.schedule = 'cosine'
  c.optimizer.warmup_steps = 50
  c.optimizer.grad_clip_norm = 1.0
  c.keep_checkpoints = 1
  c.log_every_steps = 50
  if dataset == 'ptb':
    c.task = 'ptb_char'
    c.model.hidden_size = 128
    c.model.embed_size = 32
    c.batch_size = 32
    c.num_steps = 64
    c.num_train_steps = 500
    c.eval_every_steps = 100
    c.checkpoint_every_steps = 250
    c.data.max_train_tokens = 1_000_000
    c.data.max_eval_tokens = 50_000
  else:
    c.task = 'mnist1d'
    c.model.hidden_size = 64
    c.batch_size = 64
    c.num_train_steps = 1000
    c.eval_every_steps = 100
    c.checkpoint_every_steps = 500
  return c


def get_sweep(arg='ptb'):
  _dataset(arg)
  return {
      'axes': {'model.between': BETWEEN, 'model.num_layers': DEPTHS},
      'seeds': SEEDS,
      'extra': [{'model.between': between, 'model.num_layers': DEPTHS[-1], 'model.residual': True}
                for between in ('none', 'layernorm')],
  }
