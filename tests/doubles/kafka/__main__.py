"""``python -m tests.doubles.kafka``: the standalone broker double (see ``cli``)."""

from tests.doubles.kafka.cli import main

raise SystemExit(main())
