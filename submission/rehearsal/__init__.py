"""The rehearsal's parts, reached only through `python -m submission rehearse`.

`tree.py` lays out the Kaggle-shaped folder; `runs.py` runs the kernel in it
(interactive, and as a competition rerun served to the real gateway);
`verdict.py` reads each run's log and output into a verdict and prints the table.
"""
