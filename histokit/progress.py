"""Progress bars that suit where the code runs: the terminal of ``histokit reproduce``, JupyterLab, or a plain shell.

Under ``histokit reproduce`` the stage notebooks run headless in a kernel that the runner starts with
``HISTOKIT_PROGRESS`` set: ``terminal`` sends text bars, updated at most every ``HISTOKIT_PROGRESS_INTERVAL`` seconds
(default 10; 30 and a line per update when that is a log file, not a terminal), straight to the terminal the command runs in (the kernel's original stderr, not the notebook: an
executed notebook keeps its outputs, not thousands of bar refreshes); ``off`` (``--quiet``) disables them. In
JupyterLab a bar is a widget when ipywidgets is installed and text otherwise, so tqdm never warns "IProgress not
found". A text bar inside a kernel (no ipywidgets; ``papermill`` or ``nbconvert --execute`` run directly) is a
:class:`BoundedTqdm`: its stream becomes the saved notebook's outputs, so it draws a bounded number of times by design
(every 5 % of the total, and after 1, 2, 4, ... minutes), not at a rate: an executed notebook stays small however
long the stage runs.

Use :func:`progress_bar` wherever the kit would call ``tqdm(...)``; it takes the same arguments.
"""
from __future__ import annotations

import io
import os
import sys
from functools import lru_cache

from tqdm.std import tqdm as text_tqdm

MODE_VARIABLE = "HISTOKIT_PROGRESS"          # terminal | off | (unset: interactive)
INTERVAL_VARIABLE = "HISTOKIT_PROGRESS_INTERVAL"


def progress_bar(iterable=None, **kwargs):
    """``tqdm(iterable, **kwargs)`` with the bar class and destination chosen for the current environment."""
    mode = os.environ.get(MODE_VARIABLE, "")
    if mode == "off":
        kwargs["disable"] = True
    elif mode == "terminal":
        target = kwargs.setdefault("file", _terminal())
        kwargs.setdefault("dynamic_ncols", True)
        if not _is_tty(target):  # a log file or CI: a line per update, and fewer of them
            kwargs.setdefault("mininterval", float(os.environ.get(INTERVAL_VARIABLE, "30")))
            kwargs.setdefault("delay", 5.0)  # a loop done in seconds leaves no line at all
            return LineTqdm(iterable, **kwargs)
        kwargs.setdefault("mininterval", float(os.environ.get(INTERVAL_VARIABLE, "10")))
        return ThrottledTqdm(iterable, **kwargs)
    return _bar_class(mode)(iterable, **kwargs)


class ThrottledTqdm(text_tqdm):
    """A text bar whose postfix waits for the next timed refresh: tqdm's ``set_postfix`` redraws at once by default,
    which, called every step, would bypass ``mininterval`` and print a line per step."""

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_postfix_str(self, s="", refresh=True):
        super().set_postfix_str(s, refresh=False)


class BoundedTqdm(ThrottledTqdm):
    """A text bar for a kernel's stream, which a notebook saves: besides its first and last draw it redraws only when
    the count passes another ``1 / MILESTONES`` of the total (a count 1, 2, 4, ... without a total) or the elapsed
    time passes 1, 2, 4, ... minutes. At most about MILESTONES + log2(duration / 1 min) draws per bar, whatever the
    speed of the loop; tqdm's own timing only decides how often a draw is considered."""

    MILESTONES = 20
    FIRST_TIME_MARK_S = 60.0

    def __init__(self, iterable=None, **kwargs):
        self._mark, self._time_mark = -1, self.FIRST_TIME_MARK_S  # set before tqdm's first draw in __init__
        super().__init__(iterable, **kwargs)

    def _due(self) -> bool:
        if self.total:
            mark = int(self.n * self.MILESTONES // self.total)
        else:
            mark = int(self.n).bit_length()  # a new mark at n = 1, 2, 4, 8, ...
        if mark > self._mark:
            self._mark = mark
            return True
        elapsed = self._time() - self.start_t
        if elapsed >= self._time_mark:
            while self._time_mark <= elapsed:
                self._time_mark *= 2
            return True
        return False

    def display(self, msg=None, pos=None):
        # an explicit message (close clearing the line) and the closing draw always go through
        if msg is None and not self.disable and not self._due():
            return False
        return super().display(msg, pos)


class LineTqdm(ThrottledTqdm):
    """A bar for a log: each refresh is a line of its own instead of a carriage return over the last one."""

    def __init__(self, iterable=None, **kwargs):
        kwargs["file"] = _LinesOnly(kwargs.get("file") or _terminal())
        super().__init__(iterable, **kwargs)

    @staticmethod
    def status_printer(file):
        def print_status(line):
            if line:
                file.write(line.rstrip() + "\n")
                file.flush()
        return print_status


class _LinesOnly:
    """Passes whole lines on; drops the bare newline tqdm writes after a finished bar (the line is already ended)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        if text != "\n":
            self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


def _is_tty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _bar_class(mode: str):
    if mode in ("terminal", "off") or not _in_notebook():
        return text_tqdm
    if not _widgets_available():
        return BoundedTqdm
    from tqdm.notebook import tqdm as widget_tqdm

    return widget_tqdm


@lru_cache(maxsize=1)
def _terminal():
    """The stream the kernel's own process was started with. ipykernel forwards file descriptor 2 into the
    notebook; ``sys.stderr.fileno()`` is its copy of the original, which reaches the runner's terminal only."""
    try:
        return io.TextIOWrapper(io.FileIO(sys.stderr.fileno(), "w", closefd=False), write_through=True)
    except (AttributeError, OSError, io.UnsupportedOperation):
        return sys.__stderr__


def _in_notebook() -> bool:
    return "ipykernel" in sys.modules and type(sys.stdout).__module__.startswith("ipykernel")


@lru_cache(maxsize=1)
def _widgets_available() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def progress_write(message: str) -> None:
    """Print a line without breaking the progress bars on screen (``tqdm.write``)."""
    text_tqdm.write(message, file=_terminal() if os.environ.get(MODE_VARIABLE) == "terminal" else None)
