"""``adasde demo``: distil, sample and score the built-in Fashion-MNIST model on a CPU and write an offline HTML
report (see ``demo/run.py``)."""
