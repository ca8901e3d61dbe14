"""Exit codes scripts can rely on (also listed in `felix-nat64 --help`)."""

OK = 0
FAILURE = 1  # the command could not do its job (see the error line)
USAGE = 2  # bad command-line arguments
INVALID_INPUT = 3  # the Felix stream or the settings in it are invalid
NOT_READY = 4  # status: the driver is running but not ready
NOT_RUNNING = 5  # status: no driver status found

DESCRIPTION = """exit codes:
  0  success
  1  failure (the error line says what to do)
  2  bad command-line arguments
  3  invalid input: a malformed Felix stream or rejected settings
  4  status: the driver is not ready
  5  status: no running driver found"""
