"""Published per-chip peaks of Cloud TPU generations, and topology names.

The roofline in ``vgg_jax.aot`` divides by these numbers.  They are the
vendor's published peaks (dense bf16 matrix throughput, HBM capacity and
bandwidth, inter-chip interconnect bandwidth), not measurements; a real
step reaches a fraction of them (its MFU).

Sources (Google Cloud TPU documentation, "TPU versions" / system
architecture pages, as published in 2025):
  v4:  https://cloud.google.com/tpu/docs/v4   275 TFLOP/s bf16, 32 GiB HBM2,
       1,200 GB/s HBM, ICI 2,400 Gbps per chip (6 links).
  v5e: https://cloud.google.com/tpu/docs/v5e  197 TFLOP/s bf16, 16 GiB HBM2,
       819 GB/s HBM, ICI 1,600 Gbps per chip.
  v5p: https://cloud.google.com/tpu/docs/v5p  459 TFLOP/s bf16, "95GB"
       HBM2e, 2,765 GB/s HBM, ICI 4,800 Gbps per chip.  (The docs' GB are
       loose: v5e's "16 GB" is 16 GiB; XLA lets a v5p program use 95.74 GiB,
       so the chip holds 96 GiB.)
  v6e: https://cloud.google.com/tpu/docs/v6e  918 TFLOP/s bf16, 32 GB HBM,
       1,640 GB/s HBM, ICI 3,584 Gbps per chip.
The HBM a program may use is less than the chip's: the runtime keeps some.
``usable_hbm_bytes`` is what XLA's TPU compiler (libtpu 0.0.42) calls
"available HBM" when it refuses a program that does not fit
("RESOURCE_EXHAUSTED: ... exceeds available HBM (30.75G)"), read from its
refusals here: 30.75 / 15.75 / 95.74 / 31.25 GiB for v4 / v5e / v5p / v6e.
A step fits when its peak is within that (``vgg_jax.aot``).
ICI is quoted in gigabits per second for all of a chip's links together;
``ici_bytes_per_s`` is that divided by 8.  f32 matrix products on TPU run
on the same bf16 MXU (XLA's default precision: one bf16 pass), so the bf16
peak is the denominator for both dtypes.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib
import re
import sys

GIB = 2 ** 30

# ``python -m vgg_jax.aot``'s exit status when the step does not fit the
# chip's HBM (2 is a usage error); launch/tpu_pod.py's preflight reads it.
EXIT_DOES_NOT_FIT = 3


@dataclasses.dataclass(frozen=True)
class Chip:
  generation: str
  bf16_flops_per_s: float
  hbm_bytes: int
  hbm_bytes_per_s: float
  ici_bytes_per_s: float
  cores_per_chip: int  # TensorCores XLA sees as one device (megacore on v4/v5p)
  # How gcloud names a slice of N chips (v4/v5p count TensorCores: 2/chip).
  accelerator_type_prefix: str
  source: str
  # What XLA's TPU compiler says a program may use (None: all of it).
  usable_hbm_bytes: int | None = None

  @property
  def usable_hbm(self) -> int:
    return self.usable_hbm_bytes or self.hbm_bytes

  def accelerator_type(self, chips: int) -> str:
    return f"{self.accelerator_type_prefix}-{chips * self.cores_per_chip}"


CHIPS = {
    "v4": Chip("v4", 275e12, 32 * GIB, 1200e9, 2400e9 / 8, 2, "v4",
               "https://cloud.google.com/tpu/docs/v4",
               usable_hbm_bytes=int(30.75 * GIB)),
    "v5e": Chip("v5e", 197e12, 16 * GIB, 819e9, 1600e9 / 8, 1,
                "v5litepod", "https://cloud.google.com/tpu/docs/v5e",
                usable_hbm_bytes=int(15.75 * GIB)),
    "v5p": Chip("v5p", 459e12, 96 * GIB, 2765e9, 4800e9 / 8, 2, "v5p",
                "https://cloud.google.com/tpu/docs/v5p",
                usable_hbm_bytes=int(95.74 * GIB)),
    # 32 GB as published for v6e (Trillium).
    "v6e": Chip("v6e", 918e12, 32 * GIB, 1640e9, 3584e9 / 8, 1, "v6e",
                "https://cloud.google.com/tpu/docs/v6e",
                usable_hbm_bytes=int(31.25 * GIB)),
}

# Other spellings people use for the same generation.
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "trillium": "v6e"}

# The names of the pods in the sweep (gcloud's accelerator types) and the
# topology each is.
SWEEP_TOPOLOGIES = {
    "v4-32": "v4:2x2x4",
    "v5e-256": "v5e:16x16",
    "v5p-128": "v5p:4x4x4",
    "v6e-256": "v6e:16x16",
}

# The slice shape of each chip count (Cloud TPU docs' topologies for each
# accelerator type: v5e/v6e are 2D tori, v4/v5p 3D).
SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8",
             128: "8x16", 256: "16x16"}
SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4",
             128: "4x4x8", 256: "4x8x8", 512: "8x8x8", 1024: "8x8x16",
             2048: "8x16x16", 4096: "16x16x16"}

_TOPOLOGY_RE = re.compile(r"^([A-Za-z0-9]+):(\d+(?:x\d+){1,2})$")
_ACCELERATOR_RE = re.compile(r"^([A-Za-z0-9]+)-(\d+)$")
_NAME_HELP = ("a topology GENERATION:AxB[xC] (v5e:4x4, v4:2x2x4, v5p:4x4x4, "
              "v6e:16x16) or a Cloud TPU accelerator type (v5litepod-16, "
              "v5e-256, v4-32, v5p-8, v6e-64; v4/v5p count TensorCores, 2 "
              "per chip)")


def _generation(name: str, full: str) -> Chip:
  gen = ALIASES.get(name.lower(), name.lower())
  if gen not in CHIPS:
    raise ValueError(f"unknown TPU generation {name!r} in {full!r}; "
                     f"known: {', '.join(sorted(CHIPS))} (also "
                     f"{', '.join(sorted(ALIASES))})")
  return CHIPS[gen]


def parse_accelerator_type(name: str) -> tuple[Chip, int]:
  """``"v5litepod-64"`` -> (the v5e Chip, 64 chips); ``"v4-32"`` -> (v4, 16).

  gcloud's accelerator types count chips for v5e/v6e and TensorCores for
  v4/v5p (2 per chip).
  """
  m = _ACCELERATOR_RE.match(name.strip())
  if not m:
    raise ValueError(f"{name!r} is not an accelerator type GENERATION-N "
                     "(v5litepod-64, v4-32, v5p-128, v6e-8)")
  chip = _generation(m.group(1), name)
  n = int(m.group(2))
  if n < 1 or n % chip.cores_per_chip:
    raise ValueError(f"{name}: {chip.generation} accelerator types count "
                     f"TensorCores, {chip.cores_per_chip} per chip; the "
                     "number must be a positive multiple of "
                     f"{chip.cores_per_chip}")
  return chip, n // chip.cores_per_chip


def slice_shapes(chip: Chip) -> dict[int, str]:
  """Chip count -> slice shape, for ``chip``'s generation (2D or 3D torus)."""
  return SHAPES_3D if chip.cores_per_chip > 1 else SHAPES_2D


def accelerator_topology(name: str) -> str:
  """The topology of an accelerator type: ``"v5litepod-64"`` -> ``"v5e:8x8"``."""
  chip, chips = parse_accelerator_type(name)
  shapes = slice_shapes(chip)
  if chips not in shapes:
    raise ValueError(
        f"{name} is {chips} chips, not a {chip.generation} slice size Cloud "
        f"TPU offers as one accelerator type ({', '.join(map(str, shapes))} "
        f"chips); give the topology itself, e.g. "
        f"{chip.generation}:{next(iter(shapes.values()))}")
  return f"{chip.generation}:{shapes[chips]}"


def parse_topology(name: str) -> tuple[Chip, tuple[int, ...]]:
  """``"v5e:4x4"`` or ``"v5litepod-16"`` -> (the v5e Chip, (4, 4)).

  A clear ``ValueError`` for anything else.  Whether libtpu can build the
  shape is checked where the devices are made (``aot.topology_devices``).
  """
  name = name.strip()
  if _ACCELERATOR_RE.match(name):
    name = accelerator_topology(name)
  m = _TOPOLOGY_RE.match(name)
  if not m:
    raise ValueError(f"topology {name!r} is not {_NAME_HELP}")
  chip = _generation(m.group(1), name)
  dims = tuple(int(d) for d in m.group(2).split("x"))
  if min(dims) < 1:
    raise ValueError(f"topology {name!r} has an empty dimension")
  if chip.cores_per_chip == 1 and len(dims) == 3 and dims[2] == 1:
    dims = dims[:2]  # v6e:2x2x1 is v6e:2x2
  if chip.cores_per_chip == 1 and len(dims) != 2:
    raise ValueError(f"{chip.generation} slices are 2D (AxB, e.g. "
                     f"{chip.generation}:4x4), not {name!r}")
  return chip, dims


def canonical_topology(name: str) -> str:
  """The ``generation:dims`` form of ``name`` (accelerator types resolved)."""
  chip, dims = parse_topology(name)
  return f"{chip.generation}:{'x'.join(map(str, dims))}"


# ----------------------------------------------------------------------------
# The process that compiles for TPU here (vgg_jax.aot).  No jax import in
# this module: this must run before jax is imported.

# Compile-only TPU devices need libtpu but no TPU; these keep libtpu from
# probing a cloud metadata server and printing warnings about it, and keep
# JAX's default backend on the CPU.  ALLOW_MULTIPLE_LIBTPU_LOAD: libtpu
# otherwise holds /tmp/libtpu_lockfile, and a second compiling process (a
# sweep and a test, pytest -n) fails with "Internal error when accessing
# libtpu multi-process lockfile"; compile-only devices share nothing.
AOT_ENV = {"ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
           "TPU_SKIP_MDS_QUERY": "1", "TPU_WORKER_HOSTNAMES": "localhost",
           "TPU_WORKER_ID": "0", "JAX_PLATFORMS": "cpu",
           "TF_CPP_MIN_LOG_LEVEL": "2"}
# Where setup.sh installs libtpu (outside the virtualenv, so that no other
# process sees it and tries to start a TPU).
REPO_LIBTPU_DIR = pathlib.Path(__file__).resolve().parent.parent / ".libtpu"


def libtpu_dir() -> pathlib.Path | None:
  """A directory holding an installed ``libtpu`` package, if any."""
  for d in (os.environ.get("VGG_JAX_LIBTPU_DIR"), REPO_LIBTPU_DIR):
    if d and (pathlib.Path(d) / "libtpu").is_dir():
      return pathlib.Path(d)
  return None


def prepare_aot_environment() -> None:
  """Set AOT_ENV (unless set) and make setup.sh's libtpu importable.

  Call before jax is imported (JAX reads JAX_PLATFORMS at import).
  """
  for k, v in AOT_ENV.items():
    os.environ.setdefault(k, v)
  if importlib.util.find_spec("libtpu") is None:
    d = libtpu_dir()
    if d is not None:
      sys.path.insert(0, str(d))
