"""Word-level Penn Treebank exactly as Zaremba, Sutskever & Vinyals (2014), "Recurrent Neural
Network Regularization": SGD, batch 20, forget bias 0, every weight U(-init, init), dropout on the
non-recurrent connections only (embedding output, between layers, before the softmax), and their
loss: summed over the unrolled steps and averaged over the batch, so that learning rate 1 and the
clipping norm mean what they meant there.

  python main.py --config=configs/zaremba.py:small --workdir=runs/zaremba_small
  python main.py --config=configs/zaremba.py:medium --workdir=runs/zaremba_medium
  python main.py --config=configs/zaremba.py:large --workdir=runs/zaremba_large

Reported test perplexity: small 114.5, medium 82.7, large 78.4 (TensorFlow's rerun: 115.9, 82.1,
78.3).
"""
from configs import common

SIZES = {
    #         hidden steps dropout init  clip lr-decay start epochs
    'small': (200, 20, 0.0, 0.1, 5.0, 0.5, 4, 13),
    'medium': (650, 35, 0.5, 0.05, 5.0, 0.8, 6, 39),
    'large': (1500, 35, 0.65, 0.04, 10.0, 1 / 1.15, 14, 55),
}


def get_config(arg='small'):
  size = common.choice(arg, SIZES, 'small', 'configs/zaremba.py')
  hidden, steps, dropout, init, clip, decay, start, epochs = SIZES[size]
  c = common.base_config()
  c.dataset = 'ptb_word'
  c.batch_size = 20
  c.bptt_length = steps
  c.loss_reduction = 'sequence'  # their loss sums over the bptt_length steps: lr 1 assumes it
  c.num_train_steps = 0
  c.num_epochs = float(epochs)
  c.eval_every_steps = 2000
  c.checkpoint_every_steps = 2000
  c.log_every_steps = 200
  m = c.model
  m.num_layers = 2
  m.hidden_size = hidden
  m.embed_size = hidden
  m.forget_bias = 0.0
  m.init_scale = init
  m.dropout = m.embed_dropout = m.output_dropout = dropout
  o = c.optimizer
  o.name = 'sgd'
  o.learning_rate = 1.0
  o.schedule = 'step'
  o.decay_start_epoch = start
  o.decay_factor = decay
  o.grad_clip_norm = clip
  return c
