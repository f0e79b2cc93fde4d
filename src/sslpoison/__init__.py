"""sslpoison: attack, defend and measure self-supervised vision encoders."""

__version__ = "0.1.0"
