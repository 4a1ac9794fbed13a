"""fruitcnn's benchmarks: ``python bench/run.py TASK`` (run.py), the helpers the tasks share
(common.py), one module per task family (tasks/) and data-set stand-ins (standins.py)."""
