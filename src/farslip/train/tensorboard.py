"""TensorBoard event files that hold each step once, also after a resume.

``SummaryWriter(purge_step=N)`` only asks readers to drop what follows step N: the event files still hold the
steps logged after the checkpoint, and the resumed run writes them again. So before a resumed run opens its
writer, the existing event files are rewritten with the events up to the resume step only (wall times kept),
and a fresh start removes them.
"""
from __future__ import annotations

from pathlib import Path


def open_writer(folder: Path, resume_step: int):
    """A SummaryWriter for ``folder`` after dropping every event past ``resume_step`` from its files."""
    from torch.utils.tensorboard import SummaryWriter

    keep_events_up_to(Path(folder), resume_step)
    return SummaryWriter(str(folder))


def keep_events_up_to(folder: Path, step: int) -> None:
    """Rewrite the event files in ``folder`` as one file holding the events of steps ``<= step`` (none for 0)."""
    files = sorted(folder.glob("events.out.tfevents.*"))
    if not files:
        return
    kept = []
    if step > 0:
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

        for path in files:
            kept += [e for e in EventFileLoader(str(path)).Load()
                     if not e.HasField("file_version") and e.step <= step]
    if kept:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        writer = EventFileWriter(str(folder), filename_suffix=".kept")
        for event in kept:
            writer.add_event(event)
        writer.close()
    for path in files:
        path.unlink()
