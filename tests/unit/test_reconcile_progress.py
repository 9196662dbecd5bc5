"""Progress on stderr: drawn only on a terminal, counts only, one line per phase."""

from __future__ import annotations

import io

from adapter.reconcile.progress import Progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_terminal() -> None:
    """Off a TTY nothing is written; on one each phase shows done/total and ends its line."""
    quiet = io.StringIO()
    progress = Progress(quiet)
    progress.start("contacts", 4)
    progress.advance(4)
    progress.close()
    assert quiet.getvalue() == ""

    tty = _Tty()
    progress = Progress(tty, interval=0.0)
    progress.start("contacts", 4)
    progress.advance(2)
    progress.advance(2)
    progress.start("appointments", None)
    progress.advance(1)
    progress.close()
    lines = tty.getvalue().split("\n")
    assert lines[0].endswith("\rcontacts: 4/4\x1b[K") and lines[1].endswith("\rappointments: 1\x1b[K")
    assert lines[2] == ""
