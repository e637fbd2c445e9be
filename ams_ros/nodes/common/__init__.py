"""What every node and executable shares: parameters, topics, QoS, conversions, spinning, launch helpers."""
