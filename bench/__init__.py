"""Benchmarks of callrec (not tests): each prints its figures and a baseline measured in the
same run. `python -m bench` runs them all at sizes that take a few minutes; `--full` at the
sizes of issue 8. See `bench/__main__.py`."""
