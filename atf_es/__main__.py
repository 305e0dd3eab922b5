"""``python -m atf_es`` is the ``atf-es`` command."""

import sys

from atf_es.cli import main

if __name__ == "__main__":
    sys.exit(main())
