"""``python -m gossamer.proxy``: run a sidecar from GOSSAMER_PROXY_* settings."""

import sys

from gossamer.proxy.process.main import main

sys.exit(main())
