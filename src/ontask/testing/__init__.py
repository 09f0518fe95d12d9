"""Test and benchmark support shipped with the package: tiny models and a fake server."""
