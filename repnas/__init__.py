"""repnas: neural architecture search over parameter-repetition schemes in CNNs.

Four subpackages, one concept each (see docs/design.md):
``rescale`` (the learnable-repetition method), ``spaces`` (model families and search spaces),
``search`` (data, trainer, Optuna/Ray drivers) and ``analysis`` (Pareto fronts and reports).
"""

__version__ = "0.1.0"
