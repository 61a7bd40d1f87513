"""``python -m medssl_monai``: the command-line interface (see :mod:`medssl_monai.cli`)."""

from medssl_monai.cli import main

if __name__ == "__main__":
    main()
