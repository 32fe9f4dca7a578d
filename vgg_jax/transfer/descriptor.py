"""The paper's image descriptor (Appendix B), as pure array math.

Input: per image, the ReLU'd output of FC2 (the penultimate layer; the last,
1000-way layer is removed) applied densely over the whole image rescaled so
that its smallest side is Q, i.e. a map (H, W, 4096) of any spatial size, or
that map already average-pooled to (4096,).  Output: one vector per image.

Order of operations, as Appendix B states it:

1. global average pooling of the FC2 map of the image rescaled to Q
   ("We then perform global average pooling on the resulting feature map");
2. averaged with the same for the horizontally flipped image ("The
   descriptor is then averaged with the descriptor of a horizontally flipped
   image");
3. over several Q, the per-Q descriptors are either averaged (VOC:
   Q in {256, 384, 512, 640, 768}) or stacked (Caltech: Q in {256, 384, 512})
   ("can be either stacked or pooled across scales");
4. the resulting image descriptor is L2-normalised ("The resulting image
   descriptor is L2-normalised");
5. late fusion of several nets (D & E): their descriptors (each one the
   L2-normalised result of 1-4) are stacked ("performed by stacking their
   respective image descriptors").

Choices where the paper is silent (documented in docs/transfer.md):

* Stacked scales are L2-normalised once, as a whole (step 4 after step 3),
  not per scale: the paper normalises "the resulting image descriptor".
* The stacked D & E descriptor is not normalised again by default (its norm
  is sqrt(number of nets) for every image, a constant a linear SVM's C
  absorbs); ``renormalise=True`` does it.
* A descriptor that is exactly zero (every FC2 unit dead at every position)
  stays zero instead of becoming NaN.
* Steps 1 and 2 commute (pooling is linear and a flipped image's map has the
  same size), so pooling each and averaging equals pooling the averaged map.

VOC action classification (Table 12): the descriptor of the whole image and
the descriptor of the person's box (each the full 1-5 descriptor), stacked.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

# The paper's scale sets (Appendix B).
VOC_SCALES = (256, 384, 512, 640, 768)
CALTECH_SCALES = (256, 384, 512)
AGGREGATIONS = ("average", "stack")


@dataclasses.dataclass(frozen=True)
class DescriptorSpec:
  """How one descriptor is built; recorded with every feature file.

  scales: the Q values, in the order stacked descriptors are laid out.
  aggregation: "average" (VOC) or "stack" (Caltech) across scales.
  flip: average with the horizontally flipped image (the paper: always).
  nets: names of the nets whose descriptors are stacked (late fusion).
  renormalise: L2-normalise again after stacking several nets.
  box: VOC action's image+box variant (whole-image and box descriptors).
  """
  scales: tuple[int, ...] = VOC_SCALES
  aggregation: str = "average"
  flip: bool = True
  nets: tuple[str, ...] = ("D",)
  renormalise: bool = False
  box: bool = False

  def __post_init__(self):
    if self.aggregation not in AGGREGATIONS:
      raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got "
                       f"{self.aggregation!r}")
    if not self.scales or any(int(q) <= 0 for q in self.scales):
      raise ValueError(f"scales must be positive Q values, got {self.scales}")
    if len(set(self.scales)) != len(self.scales):
      raise ValueError(f"scales repeat: {self.scales}")
    if not self.nets:
      raise ValueError("nets must name at least one net")

  def dim(self, width: int = 4096) -> int:
    """Descriptor length for FC2 maps of ``width`` channels."""
    per_net = width * (len(self.scales) if self.aggregation == "stack" else 1)
    return per_net * len(self.nets) * (2 if self.box else 1)

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["scales"] = [int(q) for q in self.scales]
    d["nets"] = list(self.nets)
    return d

  @classmethod
  def from_json(cls, d: Mapping[str, Any]) -> "DescriptorSpec":
    d = dict(d)
    d["scales"] = tuple(int(q) for q in d["scales"])
    d["nets"] = tuple(d["nets"])
    return cls(**d)


def voc_spec(nets: Sequence[str] = ("D", "E")) -> DescriptorSpec:
  """VOC-2007/2012 (Table 11): five scales averaged."""
  return DescriptorSpec(scales=VOC_SCALES, aggregation="average",
                        nets=tuple(nets))


def caltech_spec(nets: Sequence[str] = ("D", "E")) -> DescriptorSpec:
  """Caltech-101/256 (Table 11): three scales stacked."""
  return DescriptorSpec(scales=CALTECH_SCALES, aggregation="stack",
                        nets=tuple(nets))


def voc_action_spec(box: bool = True) -> DescriptorSpec:
  """VOC-2012 action (Table 12): D & E, image-only or image and box."""
  return DescriptorSpec(scales=VOC_SCALES, aggregation="average",
                        nets=("D", "E"), box=box)


def global_average_pool(fmap, mask=None) -> np.ndarray:
  """Mean over the spatial positions of a map.

  fmap: (H, W, C) or a batch (N, H, W, C); a vector (C,) or (N, C) is taken
  as already pooled and returned as is.  mask: optional (H, W) / (N, H, W)
  booleans marking the valid positions of a padded batch (a dense engine
  running images of several sizes on one canvas); the mean is over those.
  Accumulates in float64.
  """
  x = np.asarray(fmap)
  if mask is None:
    if x.ndim in (1, 2):
      return x.astype(np.float32)
    if x.ndim not in (3, 4):
      raise ValueError(f"expected a map (H, W, C) or (N, H, W, C) or a pooled "
                       f"vector, got shape {x.shape}")
    return x.mean(axis=(-3, -2), dtype=np.float64).astype(np.float32)
  m = np.asarray(mask, bool)
  if x.ndim not in (3, 4) or m.shape != x.shape[:-1]:
    raise ValueError(f"mask must have the map's spatial shape {x.shape[:-1]}, "
                     f"got {m.shape}")
  count = m.sum(axis=(-2, -1))
  if np.any(count == 0):
    raise ValueError("a mask has no valid position: the image is empty")
  total = np.where(m[..., None], x, 0).sum(axis=(-3, -2), dtype=np.float64)
  return (total / count[..., None]).astype(np.float32)


def l2_normalise(x, eps: float = 1e-12) -> np.ndarray:
  """Each row (last axis) divided by its L2 norm; an all-zero row stays 0."""
  x = np.asarray(x, np.float64)
  norm = np.linalg.norm(x, axis=-1, keepdims=True)
  return (x / np.maximum(norm, eps)).astype(np.float32)


def flip_average(desc, desc_flipped) -> np.ndarray:
  """Step 2: the mean of an image's and its mirror image's descriptors."""
  a, b = np.asarray(desc, np.float64), np.asarray(desc_flipped, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"descriptor {a.shape} and flipped descriptor {b.shape} "
                     "differ in shape")
  return ((a + b) / 2).astype(np.float32)


def combine_scales(per_scale: Sequence[Any], aggregation: str) -> np.ndarray:
  """Step 3: average or stack (concatenate, in the given order) over Q."""
  if aggregation not in AGGREGATIONS:
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got "
                     f"{aggregation!r}")
  xs = [np.asarray(x, np.float64) for x in per_scale]
  if not xs:
    raise ValueError("no scales to combine")
  if len({x.shape for x in xs}) != 1:
    raise ValueError(f"per-scale descriptors differ in shape: "
                     f"{[x.shape for x in xs]}")
  if aggregation == "average":
    return np.mean(xs, axis=0).astype(np.float32)
  return np.concatenate(xs, axis=-1).astype(np.float32)


def net_descriptor(maps: Mapping[int, Any], spec: DescriptorSpec,
                   flipped: Mapping[int, Any] | None = None,
                   masks: Mapping[int, Any] | None = None,
                   flipped_masks: Mapping[int, Any] | None = None
                   ) -> np.ndarray:
  """Steps 1-4 for one net: {Q: FC2 map or pooled vector} -> descriptor.

  maps[Q] (and flipped[Q], the mirror image's, required when ``spec.flip``):
  (H, W, C) maps or pooled (C,) vectors for one image, or (N, H, W, C) /
  (N, C) for a batch; masks as in ``global_average_pool``.
  """
  missing = [q for q in spec.scales if q not in maps]
  if missing:
    raise ValueError(f"no FC2 map for scales {missing} (spec has "
                     f"{list(spec.scales)}, got {sorted(maps)})")
  masks = masks or {}
  flipped_masks = flipped_masks or {}
  per_scale = []
  for q in spec.scales:
    d = global_average_pool(maps[q], masks.get(q))
    if spec.flip:
      if flipped is None or q not in flipped:
        raise ValueError(f"spec.flip is set but there is no flipped map at "
                         f"Q={q}")
      d = flip_average(d, global_average_pool(flipped[q],
                                              flipped_masks.get(q)))
    per_scale.append(d)
  return l2_normalise(combine_scales(per_scale, spec.aggregation))


def stack_nets(per_net: Sequence[Any], renormalise: bool = False
               ) -> np.ndarray:
  """Step 5: late fusion, the nets' (L2-normalised) descriptors stacked."""
  xs = [np.asarray(x, np.float32) for x in per_net]
  if not xs:
    raise ValueError("no net descriptors to stack")
  out = np.concatenate(xs, axis=-1)
  return l2_normalise(out) if renormalise else out


def image_descriptor(maps_by_net: Mapping[str, Mapping[int, Any]],
                     spec: DescriptorSpec,
                     flipped_by_net: Mapping[str, Mapping[int, Any]] | None
                     = None) -> np.ndarray:
  """Steps 1-5: {net: {Q: map}} -> the fused descriptor (nets in spec order)."""
  missing = [n for n in spec.nets if n not in maps_by_net]
  if missing:
    raise ValueError(f"no maps for nets {missing} (spec has {list(spec.nets)})")
  flipped_by_net = flipped_by_net or {}
  return stack_nets(
      [net_descriptor(maps_by_net[n], spec, flipped_by_net.get(n))
       for n in spec.nets], spec.renormalise)


def action_descriptor(whole_image, person_box) -> np.ndarray:
  """VOC action, image and box (Table 12): [whole-image ; box] stacked.

  Each argument is a full descriptor (steps 1-5) of the whole image and of
  the person's box cut from it, respectively.
  """
  a, b = np.asarray(whole_image, np.float32), np.asarray(person_box, np.float32)
  if a.shape != b.shape:
    raise ValueError(f"image descriptor {a.shape} and box descriptor "
                     f"{b.shape} differ in shape")
  return np.concatenate([a, b], axis=-1)
