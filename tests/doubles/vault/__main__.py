"""``python -m tests.doubles.vault``: serve a VaultDouble (see ``tests.doubles.vault.main``)."""

import sys

from tests.doubles.vault import main

sys.exit(main())
