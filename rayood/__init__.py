"""rayood: distributed out-of-distribution screening of image corpora on Ray."""

__version__ = "0.1.0"
