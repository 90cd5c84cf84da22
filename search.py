#!/usr/bin/env python3
"""Search for the most accurate architecture under a latency budget: the same as `efnas search`."""

import sys

from nas.cli import main

if __name__ == "__main__":
    sys.exit(main(["search", *sys.argv[1:]]))
