"""What a job prints: quiet by default, one readable line per progress report, library floods off.

By default (no --verbosity flag) absl logs WARNING and above, and orbax's own warnings and infos (registry dumps,
'directory is read only' notices, lines of over a thousand characters) are dropped unless they are errors;
`--verbosity=0` (INFO) or higher shows everything again. Progress lines and summaries go to stderr / stdout
directly, so they show at any verbosity, from process 0 only.
"""

import logging
import sys

import jax
from absl import flags
from absl import logging as absl_logging

# Library loggers whose records below ERROR are dropped at the default verbosity (module paths, as absl names them).
QUIET_LIBRARIES = ("/orbax/", "/grain/", "/clu/", "/etils/")


class _LibraryFloodFilter(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or not any(p in record.pathname for p in QUIET_LIBRARIES)


def configure_logging() -> None:
  """Quiet console unless --verbosity was given: WARNING and up, library records only from ERROR up."""
  if flags.FLAGS.is_parsed() and flags.FLAGS["verbosity"].present:
    return
  absl_logging.set_verbosity(absl_logging.WARNING)
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, _LibraryFloodFilter) for f in handler.filters):
    handler.addFilter(_LibraryFloodFilter())


def duration(seconds: float) -> str:
  """'1:02:03', '2:03' or '7 s': a readable length of time."""
  seconds = max(0, round(seconds))
  if seconds < 60:
    return f"{seconds} s"
  hours, rest = divmod(seconds, 3600)
  return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def say(line: str) -> None:
  """One line on stderr from process 0 (progress; stdout is kept for results)."""
  if jax.process_index() == 0:
    print(line, file=sys.stderr, flush=True)


def progress_line(stage: str, step: int, total: int, steps_per_second: float | None, values: dict) -> str:
  """'ldm  step 40/60 (67%)  3.1 steps/s  ETA 7 s  loss 0.1234': a stage's progress in one line."""
  parts = [f"{stage}  step {step}/{total} ({100 * step // max(total, 1)}%)"]
  if steps_per_second:
    parts.append(f"{steps_per_second:.2f} steps/s  ETA {duration((total - step) / steps_per_second)}")
  parts += [f"{name} {value:.4g}" for name, value in values.items()]
  return "  ".join(parts)
