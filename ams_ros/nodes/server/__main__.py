import sys

from ams_ros.nodes.server.main import main

sys.exit(main())
