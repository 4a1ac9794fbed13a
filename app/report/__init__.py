"""The evaluation report of a run (``build.build_report``): report.html, report.md and
report/. The parts: ``options`` (what the report shows; no TensorFlow, so report.py's
--help stays fast), ``build`` (evaluate the run and write the pages), ``sections`` (one
function per section) and ``pages`` (the blocks and their HTML and Markdown rendering)."""
