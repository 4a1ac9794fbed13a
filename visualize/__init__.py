"""Explanation methods: one module and one function each, returning float32 arrays.

* ``occlusion.occlusion``: probability and loss maps with a square hidden.
* ``saliency.saliency``: pixel gradients of the loss or a logit (SmoothGrad,
  gradient x input).
* ``gradcam.gradcam``: Grad-CAM of any conv layer.
* ``activations.activations``: any layer's outputs.
* ``filters.filter_patterns`` / ``filters.first_layer_weights``: what excites a
  filter, found by gradient ascent from grey; the first layer's kernels.

They share ``(model, images, *, head=None, target=None, ...)`` (see ``targets``);
``draw`` makes the figures and ``explain_run`` is what explain.py runs.
``quality`` measures how far the heatmaps can be trusted: the pointing game and mask
mass against known object pixels, rank correlation with randomised models (sanity
checks), and deletion / insertion curves.
"""

METHODS: tuple[str, ...] = ("occlusion", "saliency", "gradcam", "activations", "filters")
