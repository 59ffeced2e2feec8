"""Rex's benchmark suite: Rex against nginx on the same box (run ``python bench/run.py``).

Importing this package does nothing; the parsers and the report are pure and
tested in ``tests/test_bench_parse.py``. Performance itself is never tested.
"""
