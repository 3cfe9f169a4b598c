"""Experiment configs, sweeps and reports.

Importing the library first gives every command here its quiet start-up defaults.
"""

import transformer  # noqa: F401
