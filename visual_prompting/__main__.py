import sys

from .cli import main

if __name__ == "__main__":  # not again in a worker process started by spawn or a fork server
    sys.exit(main())
