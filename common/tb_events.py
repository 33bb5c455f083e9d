"""TensorBoard event files of a resumed run: drop what the resumed run will log again.

A run killed after its last checkpoint has already written the steps between that checkpoint and the kill into
its TensorBoard version. Resuming restores the checkpoint and logs those steps again into the same version, so
TensorBoard would show two points for each of them. Before the resumed run logs anything, `trim_after_resume`
rewrites the version's event files without every event that is both at or after the checkpoint's step and written
after the checkpoint was saved: exactly what the resumed run repeats. Events of the checkpoint's own epoch that
were logged after it was saved but belong to earlier steps (epoch means, logged after the epoch-end checkpoint)
stay, since the resumed run does not repeat them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.summary.writer.record_writer import RecordWriter

from common.io.atomic import atomic_path

log = logging.getLogger(__name__)


def _is_repeated(event, step: int, saved_at: float) -> bool:
    # Only events carrying data count: the file-version header and session logs keep their place.
    has_data = event.HasField("summary") or event.HasField("graph_def") or event.HasField("tagged_run_metadata")
    return has_data and event.step >= step and event.wall_time >= saved_at


def trim_after_resume(version_dir: str | os.PathLike, step: int, saved_at: float) -> int:
    """Rewrites the event files of `version_dir` without the events a run resumed at `step` logs again.

    Args:
        version_dir: a TensorBoard version folder (`<run>/tb/version_N`); missing is fine (nothing to do).
        step: the resumed checkpoint's global step.
        saved_at: the time the checkpoint was saved (seconds since the epoch).

    Returns:
        The number of events dropped. Each file is replaced atomically under its own name, so the files keep
        their order and a crash leaves either the old or the new file.
    """
    dropped = 0
    for path in sorted(Path(version_dir).glob("events.out.tfevents.*")):
        events = list(EventFileLoader(str(path)).Load())
        kept = [e for e in events if not _is_repeated(e, step, saved_at)]
        if len(kept) == len(events):
            continue
        dropped += len(events) - len(kept)
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            writer = RecordWriter(handle)
            for event in kept:
                writer.write(event.SerializeToString())
            writer.flush()
    if dropped:
        log.info("resuming at step %d: dropped %d TensorBoard events logged after the checkpoint", step, dropped)
    return dropped
