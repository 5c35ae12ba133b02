"""Progress bars with ETA for long loops (tqdm on stderr).

Disabled when ``EMRL_PROGRESS=0`` or when stderr is not a terminal and
``EMRL_PROGRESS`` is unset (keeps CI logs short).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm.auto import tqdm


def progress_enabled() -> bool:
    env = os.environ.get("EMRL_PROGRESS")
    if env is not None:
        return env not in ("0", "false", "no", "off")
    return sys.stderr.isatty()


def progress(total: int | None = None, desc: str = "", unit: str = "it", **kw: Any) -> tqdm:
    """A tqdm bar (``.update(n)``, ``.set_postfix(...)``) that respects ``EMRL_PROGRESS``."""
    kw.setdefault("disable", not progress_enabled())
    kw.setdefault("dynamic_ncols", True)
    return tqdm(total=total, desc=desc, unit=unit, **kw)
