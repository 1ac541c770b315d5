"""What the tests share: fixture loaders and tiny configs, tiny towers of every family (``towers``), batch
builders, what spawned processes run (``sharded_worker``), and straightforward transcriptions of the official code
paths (reference_*), which the fast paths are held against and ``make bench`` times.

The test run puts ``tests/`` on ``sys.path`` (pyproject's ``pythonpath``), so tests import ``support.<module>``;
benchmarks add ``tests/`` themselves.
"""
