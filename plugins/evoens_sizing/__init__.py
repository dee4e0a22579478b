"""evoens_sizing: learning a network's size while it trains (spec ``specs/sizing.md``, seed 004).

Pure-torch core modules (no pluggy): :mod:`~evoens_sizing.stats` (exact per-unit activation
statistics of a population, dead units, Shapiro-Wilk), :mod:`~evoens_sizing.mixtures` (the two EM
fits), :mod:`~evoens_sizing.pca` (PCA size metrics with the principal axes the right way round),
:mod:`~evoens_sizing.gated` (the sigmoid-gated layer with a learnable size),
:mod:`~evoens_sizing.switch` (per-unit switches with an L1 penalty), :mod:`~evoens_sizing.compact`
(removing dead units physically, optimizer state included), :mod:`~evoens_sizing.models`,
:mod:`~evoens_sizing.trainer` (the ``sizing`` trainer of a population), :mod:`~evoens_sizing.grow`
(grow with R2R and shrink with switches in one run) and :mod:`~evoens_sizing.report`. The adapter
to evoens is :mod:`~evoens_sizing.hooks`.
"""
