"""depthlab's library: what train.py, eval.py, benchmarks/ and sweeps/ share.

The commands at the top level (train.py, eval.py) and in benchmarks/ only parse their
command line and call in here; each module has one job, said in its docstring.
"""
