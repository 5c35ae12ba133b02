"""Progress of long loops: a tqdm bar on a terminal, plain lines in a log file.

``EMRL_PROGRESS`` chooses (default: unset):

* unset, ``1``, ``on``: a tqdm bar with ETA when stderr is a terminal, otherwise (output
  redirected to a file, CI) one plain line every ``EMRL_PROGRESS_INTERVAL`` seconds
  (default 30) -- stage, count i/N, rate, elapsed, ETA and the loop's key metrics::

      [emrl vmpo] update 120/300 (40%) | 0.52 update/s | elapsed 3m50s | ETA 5m46s | train_reward=0.31

* ``bar``: always the tqdm bar; ``log``: always the plain lines;
* ``0``, ``off``: nothing.

Both write to stderr, so ``cmd > out.txt`` keeps stdout for results.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from tqdm.auto import tqdm

from emrl.errors import ConfigError

DEFAULT_INTERVAL_S = 30.0
_OFF = ("0", "false", "no", "off")
_ON = ("", "1", "true", "yes", "on", "auto")


def progress_mode(stream: TextIO | None = None) -> str:
    """``"bar"``, ``"log"`` or ``"off"`` from ``EMRL_PROGRESS`` and whether ``stream``
    (default stderr) is a terminal."""
    env = os.environ.get("EMRL_PROGRESS", "").strip().lower()
    if env in _OFF:
        return "off"
    if env in ("bar", "tqdm"):
        return "bar"
    if env in ("log", "lines"):
        return "log"
    if env not in _ON:
        raise ConfigError(f"EMRL_PROGRESS={env!r}: expected one of 1/on, bar, log, 0/off")
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "bar" if callable(isatty) and isatty() else "log"


def progress_enabled() -> bool:
    """Whether any progress is shown (``EMRL_PROGRESS`` is not ``0``/``off``)."""
    return progress_mode() != "off"


def progress_interval() -> float:
    """Seconds between two plain progress lines (``EMRL_PROGRESS_INTERVAL``, default 30)."""
    text = os.environ.get("EMRL_PROGRESS_INTERVAL", "")
    if not text.strip():
        return DEFAULT_INTERVAL_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ConfigError(f"EMRL_PROGRESS_INTERVAL={text!r}: expected a number of seconds >= 0")
    return value


def format_duration(seconds: float) -> str:
    """``59s``, ``3m05s``, ``1h02m``."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class LogProgress:
    """tqdm's interface (``update``, ``set_postfix``, ``close``) as plain log lines.

    Prints a line after the first update, then whenever ``interval`` seconds have passed
    since the last line, and a last line on :meth:`close` if the count or the metrics
    changed since.
    """

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", *,
                 initial: int = 0, interval: float | None = None, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, disable: bool = False,
                 **_: Any) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self._n0 = int(initial)
        self.interval = progress_interval() if interval is None else float(interval)
        self.stream = stream
        self.clock = clock
        self.disable = disable
        self.postfix: dict[str, Any] = {}
        self._t0 = clock()
        self._last_line: float | None = None
        self._printed: tuple[int, dict] | None = None
        self.closed = False

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kw: Any) -> None:
        self.postfix = {**(ordered_dict or {}), **kw}

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def write(self, s: str, file: Any = None) -> None:
        """Print a message between progress lines (tqdm's ``write``)."""
        print(s, file=file if file is not None else sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        if self.disable or self.closed:
            return
        self.n += n
        if self.n == self._n0:
            return
        now = self.clock()
        if self._last_line is None or now - self._last_line >= self.interval:
            self._emit(now)

    def line(self, now: float | None = None) -> str:
        """The progress line as it would be printed now."""
        now = self.clock() if now is None else now
        elapsed = now - self._t0
        done = self.n - self._n0
        rate = done / elapsed if elapsed > 0 else 0.0
        count = f"{self.unit} {self.n}"
        if self.total:
            count += f"/{self.total} ({100.0 * self.n / self.total:.0f}%)"
        parts = [f"[{self.desc}] {count}" if self.desc else count]
        if rate >= 1:
            parts.append(f"{rate:.1f} {self.unit}/s")
        elif rate > 0:
            parts.append(f"{rate:.2f} {self.unit}/s")
        parts.append(f"elapsed {format_duration(elapsed)}")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {format_duration((self.total - self.n) / rate)}")
        if self.postfix:
            parts.append(" ".join(f"{k}={v}" for k, v in self.postfix.items()))
        return " | ".join(parts)

    def _emit(self, now: float) -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        print(self.line(now), file=stream, flush=True)
        self._last_line, self._printed = now, (self.n, dict(self.postfix))

    def close(self) -> None:
        if self.disable or self.closed:
            return
        self.closed = True
        if self._printed != (self.n, self.postfix) and self.n > self._n0:
            self._emit(self.clock())  # the last count, or a metric set after the last update

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(total: int | None = None, desc: str = "", unit: str = "it", **kw: Any) -> Any:
    """A progress display with tqdm's interface (``.update(n)``, ``.set_postfix(...)``,
    ``.close()``): a bar, log lines or nothing (see the module docstring)."""
    mode = progress_mode(kw.get("file"))
    if mode == "log":
        return LogProgress(total=total, desc=desc, unit=unit, stream=kw.pop("file", None), **kw)
    kw.setdefault("disable", mode == "off")
    kw.setdefault("dynamic_ncols", True)
    return tqdm(total=total, desc=desc, unit=unit, **kw)
