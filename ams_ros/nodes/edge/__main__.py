"""python -m ams_ros.nodes.edge: the edge executable."""

from ams_ros.nodes.edge.main import main

main()
