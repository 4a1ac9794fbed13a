"""Explanation methods (occlusion sensitivity, gradient saliency, Grad-CAM, activations,
filter visualisation).

None is implemented yet: they arrive with the explanations issue. The package exists so
the layout (``fruitcnn/``, ``heads/``, ``visualize/``) is in place and importable.
"""

METHODS: tuple[str, ...] = ()
