#!/usr/bin/env python3
"""Export an architecture from a trained supernet: the same as `efnas export`."""

import sys

from nas.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
