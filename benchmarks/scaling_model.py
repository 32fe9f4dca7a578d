"""Data-parallel scaling on paper: gradient all-reduce vs compute per step.

    python benchmarks/scaling_model.py                       # TPU v4 defaults
    python benchmarks/scaling_model.py --peak-tflops 197 --link-gbytes 200 \
        --mfu 0.5 --name "TPU v5e"

For a net (default D), a global batch (default the paper's 256) and a chip
(bf16 peak, model FLOP utilisation, all-reduce bandwidth per chip), prints per
device count: compute time per step, all-reduce time of the replicated
gradient, and the same with the FC kernels sharded over a model axis
(``sharding.shard_fc_kernels``).  Data parallelism stops scaling where the
all-reduce no longer hides behind the backward pass, i.e. where it exceeds
the compute time.  Writes JSON beside the table.

Model of the all-reduce: a bandwidth-optimal (ring / 2-D torus) all-reduce
moves 2 (n-1)/n of the gradient bytes through each chip's links; latency
terms are ignored (they matter only for tiny messages).  Gradients are
all-reduced in float32 unless ``--grad-bytes 2``.  The "+FC sharded"
column is the "one weird trick" layout (Krizhevsky 2014): body data-parallel,
FC1/FC2 kernels split over ``--model-axis`` devices.
"""

from __future__ import annotations

import argparse
import json
import pathlib

from vgg_jax.models import count_macs, net_spec, param_count, abstract_model


def fc_kernel_params(name: str) -> int:
  m = abstract_model(name)
  return sum(int(getattr(m, fc).kernel.size) for fc in ("fc1", "fc2"))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="D")
  p.add_argument("--global-batch", type=int, default=256)
  p.add_argument("--image-size", type=int, default=224)
  p.add_argument("--name", default="TPU v4")
  p.add_argument("--peak-tflops", type=float, default=275.0,
                 help="bf16 peak per chip (TPU v4: 275; v5e: 197; H100: 989)")
  p.add_argument("--mfu", type=float, default=0.5,
                 help="fraction of peak the step reaches")
  p.add_argument("--link-gbytes", type=float, default=100.0,
                 help="all-reduce bus bandwidth per chip, GB/s")
  p.add_argument("--grad-bytes", type=int, default=4)
  p.add_argument("--model-axis", type=int, default=8,
                 help="devices the FC kernels are split over")
  p.add_argument("--output", default="benchmarks/results/scaling_model.json")
  args = p.parse_args(argv)

  flops_per_image = 6 * count_macs(net_spec(args.model), args.image_size)
  params = param_count(abstract_model(args.model))
  fc = fc_kernel_params(args.model)
  rate = args.peak_tflops * 1e12 * args.mfu
  bw = args.link_gbytes * 1e9
  print(f"{args.model}: {params / 1e6:.1f}M parameters, of which FC1+FC2 "
        f"kernels {fc / 1e6:.1f}M ({fc / params:.0%}); "
        f"{flops_per_image / 1e9:.1f} GFLOP per training image; "
        f"{args.name}: {args.peak_tflops:g} TFLOP/s x {args.mfu:g} MFU, "
        f"{args.link_gbytes:g} GB/s all-reduce bandwidth")
  print(f"{'devices':>7} {'batch/dev':>9} {'compute ms':>10} "
        f"{'allreduce ms':>12} {'DP scales?':>10} {'FC sharded ms':>13} "
        f"{'scales?':>7}")
  rows = []
  n = 1
  while n <= 4096:
    per_dev = args.global_batch / n
    if per_dev < 1:
      break
    compute = per_dev * flops_per_image / rate
    frac = 2 * (n - 1) / n
    ar = frac * params * args.grad_bytes / bw
    k = min(args.model_axis, n)
    # Krizhevsky's "one weird trick" (2014): the conv body data-parallel over
    # all n devices, FC1/FC2 split k ways.  The body's gradients are
    # all-reduced as before; each FC shard is all-reduced over the n/k
    # replicas that hold it; and FC1's input activations (7x7x512 per image)
    # are all-gathered within each group of k (forward) and their gradients
    # reduce-scattered back (backward).
    dp = max(n // k, 1)
    frac_dp = 2 * (dp - 1) / dp
    fc_in = 7 * 7 * 512
    act_bytes = 2 * per_dev * (k - 1) * fc_in * 4
    ar_sharded = ((frac * (params - fc) + frac_dp * fc / k) * args.grad_bytes
                  + act_bytes) / bw
    rows.append(dict(devices=n, batch_per_device=per_dev,
                     compute_ms=compute * 1e3, allreduce_ms=ar * 1e3,
                     allreduce_fc_sharded_ms=ar_sharded * 1e3,
                     scales=ar <= compute,
                     scales_fc_sharded=ar_sharded <= compute))
    yes = lambda ok: "yes" if ok else "no"
    print(f"{n:>7} {per_dev:>9.1f} {compute * 1e3:>10.2f} {ar * 1e3:>12.2f} "
          f"{yes(ar <= compute):>10} {ar_sharded * 1e3:>13.2f} "
          f"{yes(ar_sharded <= compute):>7}")
    n *= 2
  out = pathlib.Path(args.output)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(dict(vars(args), params=params,
                                 fc_kernel_params=fc,
                                 flops_per_image=flops_per_image,
                                 rows=rows), indent=2))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
