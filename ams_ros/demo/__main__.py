import sys

from ams_ros.demo.cli import main

sys.exit(main())
