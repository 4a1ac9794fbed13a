"""``python -m fruitcnn.distributed --workers N -- train.py ...``: see ``fruitcnn.distributed.launch``."""

import sys

from fruitcnn.distributed.launch import main

sys.exit(main())
