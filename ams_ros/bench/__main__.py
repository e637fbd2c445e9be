"""python -m ams_ros.bench"""

import sys

from ams_ros.bench.cli import main

sys.exit(main())
