"""Progress of long work: a bar on a terminal, plain lines otherwise (logs, CI, pipes)."""

from __future__ import annotations

import sys
import time

import click


class Progress:
    """Call advance(n) as work is done; a bar when stderr is a terminal, else a line every few seconds."""

    def __init__(self, total: int, label: str, *, every: float = 2.0, enabled: bool = True):
        self.total, self.label, self.every, self.done = total, label, every, 0
        self._enabled = enabled
        self._bar = None
        self._last_line = time.monotonic()
        if enabled and sys.stderr.isatty():
            self._bar = click.progressbar(length=max(total, 1), label=label, file=sys.stderr, show_pos=True)
            self._bar.__enter__()

    def advance(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._enabled and time.monotonic() - self._last_line >= self.every:
            self._last_line = time.monotonic()
            click.echo(f"{self.label}: {self.done}/{self.total}", err=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
