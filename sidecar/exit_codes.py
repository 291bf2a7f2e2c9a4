"""The exit codes of every ``sidecar`` command, defined once (the report command uses them too).

A script that runs ``sidecar check`` or ``sidecar gold run`` in a pipeline branches on them:
1 means "look at this" and nothing else, so an unreadable file can never pass for a fired
trigger.
"""

from __future__ import annotations

__all__ = [
    "EPILOG",
    "EXIT_DATA",
    "EXIT_FIRED",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CommandError",
]

#: Done; nothing fired, every gate passed.
EXIT_OK = 0
#: A retraining trigger fired, or a gate failed (a gold-set regression, a canary action its
#: state or an approval gate refused).
EXIT_FIRED = 1
#: A usage or input error: bad arguments, an invalid config or contract, a bad gold file.
EXIT_USAGE = 2
#: The data could not be read: a missing, locked or corrupt DuckDB file with no live sidecar
#: to ask, an unreadable Parquet export, an admin API that cannot be reached; for ``serve``,
#: records it accepted that the final flush could not write.
EXIT_DATA = 3
#: An unexpected error: a bug (the traceback is printed). Never 1: a crash must not pass
#: for a fired trigger (sysexits' EX_SOFTWARE).
EXIT_INTERNAL = 70
#: Interrupted (Ctrl-C); a replay resumes with its --run-id.
EXIT_INTERRUPTED = 130

#: The exit-code table every command's ``--help`` ends with.
EPILOG = (
    "exit codes: 0 fine; 1 a trigger fired or a gate failed; 2 usage or input error "
    "(arguments, config, contract, gold file); 3 the data could not be read (missing, "
    "locked or corrupt DuckDB file with no live sidecar, unreadable Parquet, admin API "
    "unreachable; serve: accepted records lost at close); 70 internal error (a bug: the "
    "traceback is printed); 130 interrupted"
)


class CommandError(Exception):
    """A command cannot go on; ``exit_code`` says which kind (usage 2, data 3)."""

    def __init__(self, message: str, exit_code: int = EXIT_DATA) -> None:
        super().__init__(message)
        self.exit_code = exit_code
