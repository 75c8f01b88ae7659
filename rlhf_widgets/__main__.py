import sys

from rlhf_widgets.cli import main

sys.exit(main())
