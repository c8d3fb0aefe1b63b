"""Terminal progress: a flow reports, the command that called it listens; plain lines when not a terminal."""

from __future__ import annotations

import io

from flows import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_report_reaches_only_the_current_listener():
    seen: list[tuple] = []
    progress.report(1, 0, 3)  # nobody listening: a no-op
    with progress.listening(lambda *a: seen.append(a)):
        progress.report(2, 1, 3)
    progress.report(3, 1, 3)
    assert seen == [(2, 1, 3)]


def test_plain_lines_end_with_the_final_count():
    out = io.StringIO()
    with progress.bar("cleaning", stream=out, every=3600) as show:
        for done in range(1, 5):
            show(done, done // 4, None)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cleaning: 4 images, 1 errors, ")


def test_terminal_gets_a_bar_with_counts():
    out = _Terminal()
    with progress.bar("training", unit="steps", stream=out, errors=False) as show:
        show(7, 0, 10)
    text = out.getvalue()
    assert "training" in text and "7/10" in text and "errors" not in text
