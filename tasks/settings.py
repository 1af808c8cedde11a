"""Where the platform keeps its data and state when the user does not say."""

from __future__ import annotations

import os
from pathlib import Path


def default_data_root() -> str:
    """LLAMALINE_DATA (set by `llamaline up` for the worker), else ./data."""
    return os.environ.get("LLAMALINE_DATA") or str(Path("data").resolve())
