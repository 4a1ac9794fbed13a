"""The application layer: what fruitcnn's command lines run on top of the library.

``app.report`` writes a run's evaluation report (metrics, figures, explanation
quality) and ``app.study`` plans and runs parameter studies. Both use the core
(``fruitcnn``), the heads (``heads``) and the explanations (``visualize``); nothing
below imports them. See docs/architecture.md.
"""
