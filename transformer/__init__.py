"""The Transformer ("Attention Is All You Need") in JAX/Flax.

Importing the package sets quiet defaults for the libraries below it, before they load: no
TensorFlow start-up notices (TensorFlow only feeds data here, so its oneDNN kernels are off) and,
on a machine without TPU chips, a libtpu (the `[tpu]` extra, for ahead-of-time compilation) that
does not query a metadata server or warn about one. Values set in the environment win.
"""

import glob as _glob
import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
if not _glob.glob("/dev/accel*") and not _glob.glob("/dev/vfio/[0-9]*"):  # not a TPU VM
  for _key, _value in {"TPU_SKIP_MDS_QUERY": "1", "TPU_ACCELERATOR_TYPE": "v4-8",
                       "TPU_WORKER_HOSTNAMES": "localhost", "TPU_WORKER_ID": "0",
                       "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}.items():
    _os.environ.setdefault(_key, _value)
