"""lesionbench: weakly supervised anomaly detection in brain MRI, benchmarked.

The package's import namespace is one package, ``lesionbench``; its folders are ``benchmark/`` (this
core), ``methods/``, ``datasets/`` and ``leaderboard/`` (see design §1).
"""

from lesionbench.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
