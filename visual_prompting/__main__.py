from .cli import main
from .distributed import end_process

if __name__ == "__main__":  # not again in a worker process started by spawn or a fork server
    end_process(main())
