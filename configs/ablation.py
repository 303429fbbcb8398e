"""The between-layer ablation: what belongs between stacked LSTM layers?

  python -m train.sweep --config=configs/ablation.py:ptb --sweep_dir=results/ablation_ptb/runs
  python -m train.sweep --config=configs/ablation.py:mnist1d --sweep_dir=results/ablation_mnist1d/runs
  python -m train.report --sweep_dir=results/ablation_ptb/runs --out=results/ablation_ptb
  python -m train.report --sweep_dir=results/ablation_mnist1d/runs --out=results/ablation_mnist1d

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

Cost, measured for the grids whose reports are in results/ (2-core AMD EPYC CPU, each sweep
pinned to one core while another job used the other): wall time per run, start-up, compilation
and evaluation included,

  layers                    2        4         8
  ptb (500 steps)         28-30 s  57-65 s   102-164 s
  mnist1d (1,000 steps)   21-23 s  37-39 s    88-99 s

and for the whole grid, one run after another: ptb 64 min, mnist1d 48 min. `--parallel=2` on an
otherwise idle 2-core machine runs two points at once.

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


def get_config(arg='ptb'):
  dataset = common.choice(arg, DATASETS, 'ptb', 'configs/ablation.py')
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
    c.dataset = 'ptb_char'
    c.model.hidden_size = 128
    c.model.embed_size = 32
    c.batch_size = 32
    c.bptt_length = 64
    c.num_train_steps = 500
    c.eval_every_steps = 100
    c.checkpoint_every_steps = 250
    c.data.max_train_tokens = 1_000_000
    c.data.max_eval_tokens = 50_000
  else:
    c.dataset = 'mnist1d'
    c.model.hidden_size = 64
    c.batch_size = 64
    c.num_train_steps = 1000
    c.eval_every_steps = 100
    c.checkpoint_every_steps = 500
  return c


def get_sweep(arg='ptb'):
  common.choice(arg, DATASETS, 'ptb', 'configs/ablation.py')
  return {
      'axes': {'model.between': BETWEEN, 'model.num_layers': DEPTHS},
      'seeds': SEEDS,
      'extra': [{'model.between': between, 'model.num_layers': DEPTHS[-1], 'model.residual': True}
                for between in ('none', 'layernorm')],
  }
