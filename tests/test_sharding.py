"""Meshes: sharding changes the layout only, mesh errors, restoring onto another mesh."""


import jax
import numpy as np
import pytest

from tests.helpers import fixed_batches, losses_on_mesh, tiny_config
from transformer import checkpointing, sharding, steps


def test_sharding_is_only_a_layout(data_dir):
  config = tiny_config(data_dir, warmup_steps=2)
  batches = fixed_batches(3)
  reference, _ = losses_on_mesh(config, (1, 1, 1), jax.devices()[:1], batches)
  assert reference[-1] < reference[0]
  for mesh_shape in [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 2, 4)]:
    got, state = losses_on_mesh(config, mesh_shape, jax.devices(), batches)
    np.testing.assert_allclose(got, reference, rtol=2e-5, err_msg=str(mesh_shape))
  # FSDP and tensor parallelism really split the parameters.
  query = state.params["encoder"]["layers"]["layer_0"]["self_attention"]["query"]["kernel"]
  assert query.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)


def test_mesh_errors():
  with pytest.raises(ValueError,
                     match=r"config.mesh: 8 devices cannot be split into data=-1 fsdp=3"):
    sharding.make_mesh(-1, 3, 1)
  with pytest.raises(ValueError, match=r"does not match the 8 available devices"):
    sharding.make_mesh(2, 2, 1)
  with pytest.raises(ValueError, match=r"config.mesh.tensor must be a positive size or -1"):
    sharding.make_mesh(-1, 1, 0)


def test_restore_onto_a_different_mesh(data_dir, tmp_path):
  config = tiny_config(data_dir)
  config.mesh.update(dict(data=8, fsdp=1, tensor=1))
  saved_setup = steps.make_setup(config)
  state = steps.initial_state(saved_setup)
  manager = checkpointing.make_manager(str(tmp_path), keep=2, save_every=1,
                                       best_metric="eval_loss", best_mode="min")
  position = {"process_count": 1, "workers": 0, "grain": {"next_index": 7}}
  checkpointing.save(manager, 1, state, position, {"note": "x"}, force=True)
  manager.wait_until_finished()
  config.mesh.update(dict(data=2, fsdp=4, tensor=1))
  restored_setup = steps.make_setup(config)
  restored, metadata = checkpointing.restore(manager, 1, restored_setup.abstract_state)
  assert metadata == {"note": "x"}
  assert checkpointing.restore_position(manager, 1) == position
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               state, restored)
  kernel = restored.params["decoder"]["layers"]["layer_0"]["feed_forward"]["wi"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
