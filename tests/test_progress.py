"""Progress output: a live bar on a terminal, one log line in a file or pipe."""
import io
import logging

from unetflow.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_off_a_terminal_one_line_when_done(caplog):
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="unetflow"):
        assert list(progress_bar(range(5), desc="load", unit="img", stream=stream)) == [0, 1, 2, 3, 4]
        with progress_bar(total=3, desc="blocks", unit="task", stream=stream) as bar:
            bar.update()
            bar.update(2)
    assert stream.getvalue() == ""  # nothing drawn
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and lines[0].startswith("load: 5 img in ") and lines[1].startswith("blocks: 3 task in ")


def test_on_a_terminal_a_live_bar(caplog):
    stream = Terminal()
    with caplog.at_level(logging.INFO, logger="unetflow"):
        assert list(progress_bar(range(3), desc="load", stream=stream)) == [0, 1, 2]
    assert "load" in stream.getvalue() and "\r" in stream.getvalue() and not caplog.records


def test_disabled_is_silent(caplog):
    stream = Terminal()
    with caplog.at_level(logging.INFO, logger="unetflow"):
        assert list(progress_bar(range(3), desc="load", enabled=False, stream=stream)) == [0, 1, 2]
    assert stream.getvalue() == "" and not caplog.records
