"""Print the path of a shipped accelerate config: `python -m rlhf_widgets.accelerate_configs zero2`."""

import sys

from rlhf_widgets.accelerate_configs import CONFIGS, config_path

if len(sys.argv) != 2:
    sys.exit(f"usage: python -m rlhf_widgets.accelerate_configs {{{','.join(CONFIGS)}}}")
print(config_path(sys.argv[1]))
