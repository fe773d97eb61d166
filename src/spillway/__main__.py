"""`python -m spillway` is the `spillway` command."""

from spillway.cli import main

if __name__ == "__main__":
    main()
