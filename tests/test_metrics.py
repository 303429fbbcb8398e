"""metrics.MetricWriter: metrics.jsonl and the TensorBoard event file it writes, read back."""
import glob
import json
import struct

from tensorboardX.proto.event_pb2 import Event, SessionLog

from train import metrics


def read_events(path):
  """The events of a TensorBoard file (TFRecord framing: length, its CRC, data, data's CRC)."""
  events = []
  with open(path, 'rb') as f:
    while header := f.read(12):
      (length,) = struct.unpack('Q', header[:8])
      events.append(Event.FromString(f.read(length)))
      f.read(4)
  return events


def test_records_reach_both_files_and_a_resumed_writer_purges_later_steps(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path))
  for step in (5, 10):
    writer.write(step, 'train', {'loss': 1.0 / step})
  writer.close()
  resumed = metrics.MetricWriter(str(tmp_path), resume_step=5)  # the checkpoint was at step 5
  resumed.write(10, 'valid', {'loss': 0.5})
  resumed.close()

  lines = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  assert lines == [{'step': 5, 'split': 'train', 'loss': 0.2},
                   {'step': 10, 'split': 'valid', 'loss': 0.5}]
  first, second = sorted(glob.glob(str(tmp_path / 'tensorboard' / 'events*')))
  scalars = [(e.step, v.tag, round(v.simple_value, 4)) for e in read_events(first)
             for v in e.summary.value]
  assert scalars == [(5, 'train/loss', 0.2), (10, 'train/loss', 0.1)]
  events = read_events(second)
  starts = [e.step for e in events if e.session_log.status == SessionLog.START]
  assert starts == [6]  # TensorBoard drops the earlier file's records from step 6 on
  assert [(e.step, v.tag) for e in events for v in e.summary.value] == [(10, 'valid/loss')]
