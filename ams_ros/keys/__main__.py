"""python -m ams_ros.keys"""

import sys

from ams_ros.keys.cli import main

sys.exit(main())
