"""`python -m vgg_jax.models`: every net's weight layers, parameters and MACs.

Parameters are counted on the abstract model (``jax.eval_shape``: nothing is
allocated); multiply-accumulates are derived from the layer table at 224x224.
"""

from __future__ import annotations

import argparse

from vgg_jax.models import (MODEL_NAMES, abstract_model, count_macs, net_spec,
                            param_count)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--image-size", type=int, default=224)
  p.add_argument("--num-classes", type=int, default=1000)
  args = p.parse_args(argv)
  print(f"{'net':<10} {'weight layers':>13} {'parameters':>14} "
        f"{'GMACs @' + str(args.image_size):>12}")
  for name in MODEL_NAMES:
    spec = net_spec(name)
    params = param_count(abstract_model(name, num_classes=args.num_classes))
    macs = count_macs(spec, args.image_size, num_classes=args.num_classes)
    print(f"{name:<10} {spec.weight_layers:>13} {params:>14,} "
          f"{macs / 1e9:>12.3f}")


if __name__ == "__main__":
  main()
