"""evoens_binary: binarized nets and their gradient estimators (STE family, NES, CDG).

Pure-torch modules (no pluggy): ``ops`` (sign/step/k-bit forwards, the STE family), ``layers``
(BinaryActivation, BinaryLinear, BinaryConv2d), ``objective`` (a loss of flat selected parameters,
batched over populations), ``estimators`` / ``cdg`` / ``nes`` / ``hybrid`` (gradient estimators),
``analysis`` (cosines, normalisation, loss-decrease sweeps), ``toy_bench`` / ``toy_train`` /
``toy_report`` (the ``binary-estimators`` suite), ``models`` / ``training`` / ``mnist_bench``
(binarized model families and MNIST training). ``hooks`` registers the providers.
"""
