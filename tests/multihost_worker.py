"""One process of tests/test_multihost.py: a few training steps, params to .npz.

    python tests/multihost_worker.py --devices 2 --num_processes 2 \
        --process_id 0 --port 12345 --out DIR

Every process builds the same global batches (from a fixed seed) and feeds
its own rows (``local = global / processes``) through
``sharding.shard_batch``; the jitted step of ``vgg_jax.train`` runs over the
mesh of all devices of all processes.  Process 0 writes the final
parameters of every net to ``DIR/params.npz``.
"""

import argparse
import os
import sys


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--devices", type=int, required=True)
  p.add_argument("--num_processes", type=int, default=1)
  p.add_argument("--process_id", type=int, default=0)
  p.add_argument("--port", type=int, default=0)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--out", required=True)
  args = p.parse_args()
  # Before jax is imported: fake CPU devices for this process.
  os.environ["XLA_FLAGS"] = (
      f"--xla_force_host_platform_device_count={args.devices}")
  # (Not --xla_backend_optimization_level=0: it compiles faster but gave
  # wrong numbers for the im2col convolution on CPU with jax 0.10.2.)
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))
  import jax  # pylint: disable=g-import-not-at-top
  if args.num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{args.port}",
        num_processes=args.num_processes, process_id=args.process_id,
        initialization_timeout=60)
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from vgg_jax import optim, sharding, train  # pylint: disable=g-import-not-at-top
  from vgg_jax.models import create_model  # pylint: disable=g-import-not-at-top

  assert jax.process_count() == args.num_processes
  assert jax.device_count() == args.devices * args.num_processes
  mesh = sharding.make_mesh()
  global_batch = 8
  local = sharding.check_batch_size(global_batch, mesh)
  # A batch that does not divide by the devices is a clear error.
  if jax.device_count() > 1:
    try:
      sharding.check_batch_size(jax.device_count() + 1, mesh)
    except ValueError as e:
      assert "not divisible" in str(e), e
    else:
      raise AssertionError("an indivisible batch was accepted")

  out = {}
  # A-BN: dropout in the head (its key must not depend on the sharding) and
  # batch statistics over the *global* batch, as on one device.  On one
  # process with 4 devices also a ('data' 2, 'model' 2) mesh with FC1/FC2
  # kernels split over 'model' (the model-parallel hook).
  runs = [("A-BN", 1, None)]
  if args.num_processes == 1 and args.devices == 4:
    runs.append(("A-BN@model2", 2, sharding.shard_fc_kernels))
  for tag, model_axis, rule in runs:
    mesh = sharding.make_mesh(model=model_axis)
    model = create_model("A-BN", num_classes=10, rngs=nnx.Rngs(0),
                         width_mult=1 / 16, fc_width=32, head_window=1,
                         in_channels=3, init="he")
    tx = optim.sgd(0.05)
    graphdef, state = train.create_train_state(model, tx)
    shardings = sharding.param_shardings(state, mesh, rule)
    state = jax.device_put(state, shardings)
    if rule is not None:
      spec = state["params"]["fc1"]["kernel"].get_value().sharding.spec
      assert spec[-1] == sharding.MODEL_AXIS, spec
    step = train.make_train_step(graphdef, tx, seed=0, mesh=mesh,
                                 state_shardings=shardings)
    metrics = jax.device_put(train.init_metrics(), sharding.replicated(mesh))
    rng = np.random.default_rng(123)
    for _ in range(args.steps):
      images = rng.normal(size=(global_batch, 32, 32, 3)).astype(np.float32)
      labels = rng.integers(0, 10, size=(global_batch,)).astype(np.int32)
      rows = slice(args.process_id * local, (args.process_id + 1) * local)
      batch = sharding.shard_batch({"image": images[rows],
                                    "label": labels[rows]}, mesh)
      state, metrics = step(state, metrics, batch)
    flat = nnx.to_flat_state(nnx.State.merge(state["params"], state["rest"]))
    for path, var in flat:
      arr = var.get_value()
      # Fully addressable on one process; replicated (one shard = the whole
      # array) across processes.
      host = (np.asarray(arr) if arr.is_fully_addressable
              else np.asarray(arr.addressable_shards[0].data))
      out[tag + "/" + "/".join(map(str, path))] = host
    out[tag + "/loss_sum"] = np.asarray(
        metrics["loss_sum"].addressable_shards[0].data)
  if args.process_id == 0:
    os.makedirs(args.out, exist_ok=True)
    np.savez(os.path.join(args.out, "params.npz"), **out)
  if args.num_processes > 1:
    jax.distributed.shutdown()


if __name__ == "__main__":
  main()
