"""``python -m angela_queue ...`` is the ``angela-queue`` command."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="angela-queue")
