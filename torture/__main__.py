"""``python -m torture``: see ``torture.run``."""

from torture.run import main

raise SystemExit(main())
