"""Exit codes of the ``edge`` and ``server`` executables, and what a supervisor should do with each.

- ``OK`` (0): stopped by Ctrl-C or SIGTERM.
- ``FAILED`` (1): a callback, a worker thread or the start-up itself failed for a reason that a
  restart may cure (the launch files' ``respawn`` restarts the process after 2 s).
- ``CONFIG_ERROR`` (78, ``EX_CONFIG`` of sysexits.h): the process cannot start with the parameters
  it was given (``device:=cuda`` where there is none, an unknown student, a missing video or key
  file). A restart would fail the same way every 2 s for ever, so the launch files do not restart
  it; the one-line message before it names the value and the fix.

Free of rclpy and launch: the executables and the launch files both read it.
"""

OK = 0
FAILED = 1
CONFIG_ERROR = 78
