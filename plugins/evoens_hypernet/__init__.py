"""evoens_hypernet: hypernetworks that generate ensembles of classifiers.

Seed 000 (vq-ensemble; A. Nichol, 2020, after VQ-DRAW, arXiv:2003.01599). Pure-torch cores:

- :mod:`evoens_hypernet.space`: the normalized parameter space ``raw = s ⊙ u`` (fan-in scales);
- :mod:`evoens_hypernet.generator`: what every generator shares (members as ONE population, the
  memory guard, the output variance);
- :mod:`evoens_hypernet.refiner`: ``vq``, the T-stage, K-option refiner (mlp, mlp_large, bias);
- :mod:`evoens_hypernet.chunked`: ``chunked``, a chunked hypernetwork whose size does not grow as K·D·H;
- :mod:`evoens_hypernet.meta`: the meta-objectives (``pull``, ``direct``, ensemble terms), one
  batched inner SGD step over all members;
- :mod:`evoens_hypernet.search`: codes as a discrete genome, searched for the best sub-ensemble;
- :mod:`evoens_hypernet.models`: the seed's MNIST CNN (60,106 parameters).

:mod:`evoens_hypernet.hooks` is the thin adapter: the ``hypernet`` trainer, the ``vq`` and
``chunked`` weight generators, the ``vq_cnn`` model and the summary's ensemble numbers.
"""
