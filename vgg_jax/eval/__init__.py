"""Evaluation (paper §3.2, §4): one package, one file per job.

counting.py    top-1/top-5 hits and errors
dense.py       the dense engine: any ``DenseOutput`` over shape-bucketed,
               masked canvases or crops, flips, padding (Appendices A/B too)
protocols.py   centre / dense / multicrop over a split, several scales
posteriors.py  per-example posteriors saved, loaded, combined (ensembles)
classifier.py  top-1/top-5 over batches of crops (training-time validation)
evaluators.py  evaluators named in ``config.evals`` (training and command)
report.py      the paper's tables
command.py     ``python -m vgg_jax.evaluate``
"""
