"""Start-up stays quiet, and errors stay one line, with the CUDA plugin on a machine without a GPU.

CI installs the `[gpu_compile]` extra (the CUDA plugin and PJRT wheels, no NVIDIA libraries), the
environment in which XLA's CUDA stubs print "Could not find cuda drivers" at every JAX start-up.
"""

import os
import subprocess
import sys

import pytest

from transformer import quiet_start

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code_or_module: list[str], **extra_env: str) -> subprocess.CompletedProcess:
  """Runs Python as a user would: without the test suite's JAX_PLATFORMS=cpu."""
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS",
                                                        "CUDA_VISIBLE_DEVICES")}
  env.update(extra_env)
  return subprocess.run([sys.executable, *code_or_module], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module", autouse=True)
def plugin_without_gpu():
  assert quiet_start.cuda_plugin_installed(), (
      "these tests need the CUDA plugin installed: pip install -e '.[gpu_compile]'")
  assert not quiet_start.has_nvidia_gpu(), "these tests are about machines without a GPU"


def test_plain_jax_is_noisy_here():
  """The environment reproduces the problem: JAX alone prints the stubs' lines."""
  result = _run(["-c", "import jax; jax.devices()"])
  assert "Could not find cuda drivers" in result.stderr


def test_importing_the_package_starts_jax_quietly():
  result = _run(["-c", "import transformer, jax; print(jax.devices()[0].platform)"])
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "cpu"
  assert result.stderr == ""


@pytest.mark.parametrize("flags, message", [
    (["--config=no_such_config.py"], "error: --config: no config file no_such_config.py"),
    (["--config=experiments/configs/smoke.py", "--config.model.no_such_key=1"],
     "error: --config.model.no_such_key: no such config key"),
    (["--config.model.no_such_key=1"],  # the default config file, implicit
     "error: --config.model.no_such_key: no such config key"),
    (["--config=experiments/configs/smoke.py", "--mode=describe",
      "--config.model.attention_kernel=cudnn"], "error: ModelConfig.attention_kernel='cudnn'"),
])
def test_errors_stay_one_line(flags, message):
  result = _run(["-m", "transformer.main", *flags])
  assert result.returncode != 0
  assert len(result.stderr.splitlines()) == 1, result.stderr
  assert result.stderr.startswith(message), result.stderr


def test_the_config_file_is_loaded_once(tmp_path):
  counting = tmp_path / "counting.py"
  counting.write_text("import os\nwith open(os.environ['LOADS'], 'a') as log:\n  log.write('x')\n"
                      "from experiments.configs.smoke import get_config\n")
  loads = tmp_path / "loads"
  result = _run(["-m", "transformer.main", f"--config={counting}", "--config.model.d_ff=64",
                 "--mode=describe"], LOADS=str(loads), PYTHONPATH=REPO)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "d_ff=64" in result.stdout or "64" in result.stdout
  assert loads.read_text() == "x"


def test_filter_drops_only_the_noise_of_native_writes(capfd):
  with quiet_start.filtered_native_stderr(quiet_start.is_noise):
    os.write(2, b"I0000 cudart_stub.cc:31] Could not find cuda drivers on your machine\n")
    os.write(2, b"a real warning\n")
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written\n")
  assert capfd.readouterr().err == "a real warning\n"
