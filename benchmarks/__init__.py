"""Studies: one folder each (`run.py` regenerates its results, `report.py` renders them), results in
`benchmarks/results/<study>/`, rendered into `docs/results/` by `python -m benchmarks.docs`.

Every study logs its progress through `logging` at INFO, shown when run as `python -m benchmarks.<study>.run`.
"""

import logging

logging.basicConfig(level=logging.INFO, format="%(message)s")
