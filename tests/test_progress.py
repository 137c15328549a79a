"""Progress output suits its destination: a live bar on a terminal, a line every ~10 % or minute in a log."""

import io

import pytest
from tqdm import tqdm

import synthscale.progress as progress
from synthscale.progress import LogProgress, progress_bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_a_live_tqdm_bar():
    bar = progress_bar(range(5), desc="x", file=Terminal())
    assert isinstance(bar, tqdm) and list(bar) == [0, 1, 2, 3, 4]


def test_a_log_gets_a_line_every_tenth_of_the_work():
    log = io.StringIO()
    bar = progress_bar(range(1000), desc="probe", unit="step", file=log)
    assert isinstance(bar, LogProgress) and sum(1 for _ in bar) == 1000
    lines = log.getvalue().splitlines()
    assert len(lines) == 10 and all(line.startswith("probe: ") for line in lines)  # not 1000 redraws
    assert lines[0].startswith("probe:  10% 100/1000 step [") and lines[-1].startswith("probe: 100% 1000/1000 step")


def test_a_log_gets_a_line_every_minute_of_slow_work(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    log = io.StringIO()
    bar = progress_bar(total=10_000, desc="train", unit="step", file=log, initial=2000)
    for _ in range(5):
        clock[0] += 61.0
        bar.update(1)
        bar.set_postfix_str("loss 0.5")
    bar.write("a message")
    bar.close()
    lines = log.getvalue().splitlines()
    assert (
        lines[0] == "train:  20% 2001/10000 step [1:01, 0.0164 step/s]"
    )  # resumed at 2000: the pace is this session's
    assert lines[1].endswith("loss 0.5") and "a message" in lines and len(lines) == 6  # 5 minutes + the message


@pytest.mark.parametrize("file", [io.StringIO(), Terminal()])
def test_disabled_is_silent(file):
    bar = progress_bar(range(3), enabled=False, file=file)
    assert list(bar) == [0, 1, 2] and file.getvalue() == ""
