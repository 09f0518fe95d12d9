"""The `ontask` command line (typer + rich)."""
