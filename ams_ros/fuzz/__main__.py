"""python -m ams_ros.fuzz"""

import sys

from ams_ros.fuzz.cli import main

sys.exit(main())
