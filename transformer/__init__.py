"""The Transformer ("Attention Is All You Need") in JAX/Flax.

Importing the package sets quiet defaults for the libraries below it, before they load: no
TensorFlow start-up notices (TensorFlow only feeds data here, so its oneDNN kernels are off) and,
on a machine without TPU chips, a libtpu (the `[tpu]` extra, for ahead-of-time compilation) that
does not query a metadata server or warn about one; with a CUDA plugin installed on a machine
without a GPU, a JAX start-up without the CUDA stubs' "no driver" lines (`quiet_start.py`).
Values set in the environment win.
"""

import os as _os

from transformer import quiet_start as _quiet_start

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
if not _quiet_start.has_tpu():
  for _key, _value in {"TPU_SKIP_MDS_QUERY": "1", "TPU_ACCELERATOR_TYPE": "v4-8",
                       "TPU_WORKER_HOSTNAMES": "localhost", "TPU_WORKER_ID": "0",
                       "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}.items():
    _os.environ.setdefault(_key, _value)
_quiet_start.quiet_jax_start()
