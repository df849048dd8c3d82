"""latentbench: train image encoders several ways and measure what each does to the latent space.

Importing the package fills the registries (datasets, encoders, objectives) by explicit imports.
"""

__version__ = "0.1.0"


def _register_all() -> None:
    from latentbench import data, models, objectives  # noqa: F401  (registration side effects)


_register_all()
