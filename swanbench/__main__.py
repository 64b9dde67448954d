"""`python -m swanbench ...`: the same command line as the `swanbench` entry point, from a source tree too."""

from swanbench.cli import main

if __name__ == "__main__":
    main()
