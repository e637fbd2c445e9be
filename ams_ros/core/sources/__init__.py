"""Where frames come from: video files, image folders, rosbags, cameras, playlists, the synthetic world.

Importing any of it imports the synthetic world, which makes its oracle a teacher spec
(``oracle[:SEED]``): code that builds teachers from specs users give (the base station, ams-eval,
the demo) imports this package.
"""

from ams_ros.core.sources import synthetic  # noqa: F401 (registers the oracle teacher)
