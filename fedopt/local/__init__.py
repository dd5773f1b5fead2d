"""Local training that adapts: adaptive batch sizes (AdAdaGrad's norm and inner-product tests,
:mod:`fedopt.local.batch_test`), batch-size-aware learning rates (:mod:`fedopt.local.lr_scaling`),
target-based surrogates (SSO, :mod:`fedopt.local.sso`) and curricula
(:mod:`fedopt.local.curriculum`). Each works from plain PyTorch and inside the vectorized engine
(:mod:`fedopt.local.engine`, configured by the ``client:`` keys of :mod:`fedopt.local.config`)."""
