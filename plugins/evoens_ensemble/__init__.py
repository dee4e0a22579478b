"""evoens_ensemble: ensembles of a population's members, judged as ensembles.

Seed 001 (interpensembles; Abe, Buchanan, Pleiss, Zemel, Cunningham, "Deep Ensembles Work, But
Are They Necessary?", NeurIPS 2022). Pure-torch cores:

- :mod:`evoens_ensemble.metrics`: combiners and streaming ensemble/member metrics on ``(P, B, C)``
  logits (accuracy, NLL, Brier, ECE, rESCE, disagreement, diversity, ambiguity);
- :mod:`evoens_ensemble.robustness`: effective robustness (baseline fits, ER with a CI, plots);
- :mod:`evoens_ensemble.shift`: deterministic, seeded corruptions of a test split (an OOD split
  that needs no download);
- :mod:`evoens_ensemble.interp`: the lambda-interpolation between M independent networks and one
  wide network;
- :mod:`evoens_ensemble.fitness`: ensemble-level fitness and training modes.

:mod:`evoens_ensemble.hooks` is the thin adapter that registers them with evoens.
"""
