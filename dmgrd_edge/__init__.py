"""dmgrd-edge: DM-GRD anomaly detection from training to the edge runtime.

The core package is torch-free at import time: data indexing, preprocessing, metrics,
reports and the CLI entry point import torch only inside the commands that need it.
"""

__version__ = "0.1.0"
