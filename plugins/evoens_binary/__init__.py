"""evoens_binary: binarized nets and their gradient estimators (STE family, NES, CDG).

Pure-torch modules (no pluggy): ``ops`` (sign/step/k-bit forwards, the STE family), ``layers``
(BinaryActivation, BinaryLinear, BinaryConv2d), ``objective`` (a loss of flat selected parameters,
batched over populations), ``estimators`` / ``cdg`` / ``nes`` / ``hybrid`` (gradient estimators),
``analysis`` (cosines, normalisation, loss-decrease sweeps), ``models`` (binarized model
families). ``hooks`` registers the providers. The suites ``binary_estimators`` and
``binary_mnist`` live in ``benchmarks/evoens_benchmarks/``.
"""
