"""Imported by the fork server of the arena's worker processes only (``workers._context`` preloads it there).

A batch scheduler's kill or ``timeout`` sends SIGTERM to the whole process group, the fork server included. Killed,
it could no longer report its workers' exits: the command would take its workers for dead while they still record
their interrupted runs, and exit under them. Ignored here, the fork server ends as usual with the command. Each
worker installs its own SIGTERM handler as it starts.
"""

import signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)
