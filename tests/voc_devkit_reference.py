"""The PASCAL VOC devkit's classification AP (VOCevalcls.m and VOCap.m),
transcribed line by line from its MATLAB, as the reference the tests compare
vgg_jax.transfer.metrics with (imported explicitly by the tests)."""

from fractions import Fraction

import numpy as np


def devkit_ap(out, gt, year):
  """VOCevalcls.m transcribed line by line; gt: 1 / -1 / 0 (difficult).

  MATLAB semantics kept: a stable sort of -out, max() ignoring NaN (a
  difficult image ranked first gives 0/0), and "rec >= t" compared exactly
  (t = 0:0.1:1 as fractions, recall as tp/npos).
  """
  si = np.argsort(-np.asarray(out, float), kind="stable")   # [so,si]=sort(-out)
  tp = (gt[si] > 0).astype(float)                           # tp=gt(si)>0
  fp = (gt[si] < 0).astype(float)                           # fp=gt(si)<0
  fp = np.cumsum(fp)
  tp = np.cumsum(tp)
  npos = int(np.sum(gt > 0))
  rec = tp / npos                                           # rec=tp/sum(gt>0)
  with np.errstate(invalid="ignore"):
    prec = tp / (fp + tp)                                   # prec=tp./(fp+tp)
  if year == 2007:
    ap = 0.0
    for k in range(11):                                     # for t=0:0.1:1
      t = Fraction(k, 10)
      sel = [prec[j] for j in range(len(tp))
             if Fraction(int(tp[j]), npos) >= t]            # prec(rec>=t)
      sel = [v for v in sel if not np.isnan(v)]
      p = max(sel) if sel else 0.0                          # isempty -> 0
      ap = ap + p / 11
    return ap
  # VOCap.m
  mrec = np.concatenate([[0.0], rec, [1.0]])
  mpre = np.concatenate([[0.0], prec, [0.0]])
  for i in range(len(mpre) - 2, -1, -1):
    mpre[i] = np.fmax(mpre[i], mpre[i + 1])
  i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
  return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))
