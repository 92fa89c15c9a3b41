"""`python -m dispatcher.cli`: the same as the `dispatcher` command."""

from dispatcher.cli import main

if __name__ == "__main__":
    main()
