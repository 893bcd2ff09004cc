"""cxrgen: reproducible chest X-ray report generation on the IU X-ray collection."""

__version__ = "0.1.0"
