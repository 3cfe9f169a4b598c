"""The Transformer ("Attention Is All You Need") in JAX/Flax.

Importing the package sets quiet defaults for the libraries below it, before they load: XLA's
C++ logging at warnings and above (`TF_CPP_MIN_LOG_LEVEL`, which XLA reads too; TensorFlow is not
used, but a user's environment may have it, so its oneDNN notice is off as well) and, with a CUDA
plugin installed on a machine without a GPU, a JAX start-up without the CUDA stubs'
"no driver" lines (`quiet_start.py`). Values set in the environment win. (The TPU variables
that keep libtpu quiet on a machine without TPU chips are set only around an ahead-of-time TPU
compile: `aot.tpu_compile_environment`.)
"""

import os as _os

from transformer import quiet_start as _quiet_start

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
_quiet_start.quiet_jax_start()
