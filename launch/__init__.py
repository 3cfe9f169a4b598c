"""Launchers: Cloud TPU VMs and SLURM.

Importing the library first gives every command here its quiet start-up defaults.
"""

import transformer  # noqa: F401
