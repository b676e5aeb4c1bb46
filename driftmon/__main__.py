import sys

from driftmon.cli import main

# Guarded: the embedding worker's child process (multiprocessing "spawn") imports the
# main module again, under another name, and must not start a second CLI.
if __name__ == "__main__":
    sys.exit(main())
