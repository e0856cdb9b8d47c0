"""Real visual tokens for the demos (the ``[vision]`` extra, plus torch installed separately).

* :mod:`tokenset.vision.efficientnet_lite`: EfficientNet-Lite0 with its ImageNet weights; an image's token set is a
  stride-16 feature map, one token per 16x16 patch.
* :mod:`tokenset.vision.prune_demo`: ``python -m tokenset prune-demo``, a PNG grid of the patches each token
  reduction method keeps.

Nothing here is imported by ``import tokenset``: torch and the weights load only when these modules are used.
"""
