"""Experiment scripts (`python experiments/synthetic.py`, ...); a package only so that the tests can import them."""
