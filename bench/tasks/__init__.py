"""The benchmark tasks, one module per family: line.py (line, line-multihead), data.py (fruits,
mnist, cifar10), stl96.py, explain.py (occlusion), quality.py (explain-quality), study.py."""
