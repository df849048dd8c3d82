"""``python -m latentbench`` (also what torchrun runs: ``torchrun ... -m latentbench train CONFIG``)."""

from latentbench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
