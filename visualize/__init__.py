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
"""

METHODS: tuple[str, ...] = ("occlusion", "saliency", "gradcam", "activations", "filters")
