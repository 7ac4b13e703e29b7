"""Tables and plots from metrics files: the same as `python -m pflash_jax.report`.

    python experiments/report.py SRC [SRC ...] --out results/NAME [--compact]

The code lives in the package (pflash_jax/report.py) so an installed pflash_jax and the
notebooks use the same tables; see its docstring for the formats.
"""

from pflash_jax.report import main

if __name__ == "__main__":
    main()
