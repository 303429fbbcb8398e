"""Graves-style speech recognition on synthetic spoken digit strings: a deep bidirectional LSTM
with peepholes and a CTC output (Graves, Mohamed & Hinton 2013), by depth.

  python main.py --config=configs/graves.py:layers=3 --workdir=runs/graves_l3

Audio: digit strings (1-5 digits) spoken by espeak-ng (PyPI `espeakng-loader`) with several
voices and random rate and pitch; 40 log-mel features, 3 frames stacked into one step; the test
split uses voices never heard in training. Each layer reads h of the layer below directly, with
nothing in between (as in the paper). Reports the label error rate (`label_error_rate`) of greedy
CTC decoding. The paper trained with SGD (lr 1e-4, momentum 0.9) per utterance and weight noise;
this scaled-down run uses Adam on batches of 32.
"""
from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, layers=3, hidden=128, steps=3000)
  c = common.base_config()
  c.dataset = 'speech_digits'
  c.data.speech_digits.num_train = 4000
  c.data.speech_digits.num_valid = 300
  c.data.speech_digits.num_test = 500
  c.batch_size = 32
  c.num_train_steps = args.steps
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 500
  c.log_every_steps = 50
  m = c.model
  m.num_layers = args.layers
  m.hidden_size = args.hidden
  m.bidirectional = True
  m.peephole = True
  o = c.optimizer
  o.name = 'adam'
  o.learning_rate = 1e-3
  o.schedule = 'cosine'
  o.warmup_steps = 100
  o.grad_clip_norm = 1.0
  return c
