"""Progress: a live bar on a terminal, periodic log lines elsewhere (no carriage-return flood in log files)."""

import io
import logging

from sde_diffusion.progress import LogProgress, progress_bar


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_a_bar_and_a_file_gets_log_lines(caplog):
    assert not isinstance(progress_bar(10, "x", stream=_Terminal()), LogProgress)
    bar = progress_bar(10, "train", stream=io.StringIO())
    assert isinstance(bar, LogProgress)
    bar.interval = 0.0  # every update logs here; by default at most one line per 10 s
    with caplog.at_level(logging.INFO, logger="sde_diffusion"):
        bar.update(4)
        bar.set_postfix(loss="0.25")
        bar.update(6)
        bar.close()
        bar.close()  # closing twice logs once
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("train: 4/10 step (40%)") and "loss=0.25" in lines[1] and len(lines) == 3
    assert not any("\r" in line for line in lines)
