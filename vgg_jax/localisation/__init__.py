"""Localisation (paper Appendix A): boxes, the ILSVRC metric, annotations and
the synthetic CPU dataset.  See docs/localisation.md."""
