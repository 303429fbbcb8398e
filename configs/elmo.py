"""A small ELMo-style bidirectional language model on word-level Penn Treebank.

  python main.py --config=configs/elmo.py --workdir=runs/elmo

As allenai/bilm-tf's `train_elmo.py`, scaled down to fit a 2-core CPU: two independent directions
(the backward model reads the text reversed, carrying its own state), each a 2-layer LSTM with a
projection (cell 512 -> 128), cell and projection clipping at 3, a residual connection from the
second layer on and nothing else between layers; dropout 0.1; Adagrad with learning rate 0.2 and
gradient clipping at norm 10; the softmax is shared by both directions. Reports forward and
backward perplexity (`perplexity_forward`, `perplexity_backward` in results.json).
Variant `configs/elmo.py:full` uses ELMo's own sizes (cell 4096, projection 512).
"""
from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, full=False, epochs=3.0)
  c = common.base_config()
  c.dataset = 'ptb_word'
  c.batch_size = 32
  c.bptt_length = 20
  c.num_train_steps = 0
  c.num_epochs = args.epochs
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000
  c.log_every_steps = 100
  m = c.model
  m.bilm = True
  m.num_layers = 2
  m.hidden_size = 4096 if args.full else 512
  m.proj_size = 512 if args.full else 128
  m.embed_size = m.proj_size
  m.cell_clip = 3.0
  m.proj_clip = 3.0
  m.block = 'residual_op_on_skip'  # ELMo: the input added to the output from layer 2 on
  m.dropout = m.embed_dropout = m.output_dropout = 0.1
  o = c.optimizer
  o.name = 'adagrad'
  o.learning_rate = 0.2
  o.grad_clip_norm = 10.0
  return c
