"""pyllmops benchmark suites (pytest-benchmark). Run all: `python -m bench` or `pyllmops bench`."""
