"""``python -m steer.cli ...`` is the ``steer`` command (the form ``accelerate launch -m steer.cli batch ...`` needs)."""

import sys

from steer.cli.main import main

sys.exit(main())
