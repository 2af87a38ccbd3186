"""The losses, one module per family: each holds its checks, its statistics, its loss and its
gradient rule.

* :mod:`xce.losses.cross_entropy`: ``cross_entropy`` (index and probability targets, label
  smoothing, z-loss), the statistics and the gradient rule that ``linear_cross_entropy`` and the
  vocab-parallel functions reuse;
* :mod:`xce.losses.index`: losses of the target's log-probability, ``nll_loss``,
  ``softmax_focal_loss``, ``poly1_cross_entropy``;
* :mod:`xce.losses.binary`: ``binary_cross_entropy`` (on probabilities and on logits),
  ``multilabel_soft_margin_loss``, ``sigmoid_focal_loss``;
* :mod:`xce.losses.divergence`: ``kl_div``;
* :mod:`xce.losses.distillation`: ``kl_div_with_logits``, ``generalized_jsd`` (teacher and
  student logits, temperature, soft-capping), their gradients beside them.
"""
