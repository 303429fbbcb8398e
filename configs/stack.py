"""Character-level Penn Treebank with a 2-layer LSTM: the project's default run.

  python main.py --config=configs/stack.py --workdir=/tmp/stack

Variants (big_vision style): `configs/stack.py:layers=4,between=relu` and `configs/stack.py:full`
(the real run: 2x1000, dropout, 20 epochs). Any field is overridden by flags, e.g.
`--config.model.between=layernorm`.
"""
from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, layers=2, hidden=256, between='none', full=False)
  c = common.base_config()
  c.dataset = 'ptb_char'
  c.model.num_layers = args.layers
  c.model.hidden_size = args.hidden
  c.model.between = args.between
  c.model.embed_size = 64
  c.batch_size = 32
  c.bptt_length = 100
  c.optimizer.name = 'adam'
  c.optimizer.learning_rate = 3e-3
  c.optimizer.schedule = 'cosine'
  c.optimizer.warmup_steps = 50
  c.optimizer.grad_clip_norm = 1.0
  c.num_train_steps = 1000
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 250
  c.data.max_eval_tokens = 100_000
  if args.full:
    c.model.hidden_size = 1000 if args.hidden == 256 else args.hidden
    c.model.dropout = c.model.output_dropout = 0.25
    c.batch_size = 128
    c.num_train_steps = 0
    c.num_epochs = 20.0
    c.eval_every_steps = 1000
    c.checkpoint_every_steps = 1000
    c.data.max_eval_tokens = None
  return c
