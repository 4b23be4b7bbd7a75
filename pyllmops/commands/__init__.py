"""CLI subcommands, one module each (see pyllmops/cli.py)."""
