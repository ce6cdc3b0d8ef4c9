"""The capture log: a sample of the feature rows the API serves and the stream worker writes, in a
Kafka topic (`settings.capture_topic`), read back by the monitor worker as windows.

- `messages`: the message format (encode, parse, the Arrow table of a window), pure.
- `windows`: the window rules (assignment, closing by event time and by clock, empty windows,
  alignment), pure.
- `writer`: `CaptureLog`, the sampling, bounded buffer and sender thread of each process.
- `reader`: `CaptureReader`, a consumer of the topic feeding the window rules.
"""

from monitors.capture.reader import CaptureReader, CaptureUnavailable
from monitors.capture.windows import GRACE_SECONDS, Window
from monitors.capture.writer import CaptureLog

__all__ = ["GRACE_SECONDS", "CaptureLog", "CaptureReader", "CaptureUnavailable", "Window"]
