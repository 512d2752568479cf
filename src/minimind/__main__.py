"""`python -m minimind ...` (what torchrun launches) is the same as the `minimind` command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
