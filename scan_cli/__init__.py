"""scan: attach, train and calibrate SCAN early exits on any timm image classifier."""

__version__ = "0.1.0"
