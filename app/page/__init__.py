"""The inspection page (``python explain.py --serve``): open a run in the browser, browse
its test images or drop one, see the predictions and every explanation method.

``session`` holds what the page works on (runs and uploads), ``jobs`` the explanation
jobs (one at a time, with progress), ``server``
the HTTP routes (Starlette, served by uvicorn), ``static/index.html`` the page itself
(plain HTML and JavaScript).
"""
