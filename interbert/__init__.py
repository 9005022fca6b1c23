"""InterBERT: a single-stream interaction module and a two-stream extraction module over
detector regions and text, pretrained with masked group modeling and image-text matching."""

__version__ = "0.1.0"
