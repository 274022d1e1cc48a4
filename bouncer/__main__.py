"""``python -m bouncer`` is the ``bouncer`` command."""

from bouncer.cli import main

raise SystemExit(main())
