"""Test set-up: 8 simulated CPU devices, set before jax is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # libtpu (the [tpu] extra) is for AOT compilation
# Off a TPU VM, libtpu would query a metadata server, warn, and lock out a second process.
for _key, _value in {"TPU_SKIP_MDS_QUERY": "1", "TPU_ACCELERATOR_TYPE": "v4-8",
                     "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
                     "TPU_WORKER_HOSTNAMES": "localhost", "TPU_WORKER_ID": "0"}.items():
  os.environ.setdefault(_key, _value)

import jax  # noqa: E402  (must come after XLA_FLAGS)
import tensorflow as tf  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
tf.config.set_visible_devices([], "GPU")
