"""``python -m gossamer.control``: run the control plane."""

import sys

from gossamer.control.server import main

sys.exit(main())
