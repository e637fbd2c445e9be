"""The base station: ``teacher_labeler``, ``ams_trainer`` and ``asr_controller`` in one process.

One module per node, and :mod:`~ams_ros.nodes.server.state` for what they share (the robots'
sessions, the batches waiting for the teacher, the counters). :mod:`~ams_ros.nodes.server.main`
builds them (the ``server`` executable; ``python -m ams_ros.nodes.server``).
"""
