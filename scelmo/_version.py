"""The package version (its own module, so provenance and saved models need not import the package)."""

__version__ = "0.1.0"
