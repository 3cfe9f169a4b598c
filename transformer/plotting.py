"""matplotlib for the plots some modes draw, imported at first use.

Importing pyplot costs every trainer start-up about 0.4 s, and only `--mode=attention` and the
data statistics draw.
"""

from __future__ import annotations

from types import ModuleType


def pyplot() -> ModuleType:
  """`matplotlib.pyplot` on the file-only Agg backend (no display needed)."""
  import matplotlib  # noqa: PLC0415  (see the module docstring)
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415  (after choosing the backend)
  return plt
