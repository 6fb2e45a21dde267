"""The one exception type that means "the user asked for something we cannot do".

The CLI turns it into `error: <message>` on stderr and exit code 2, without a traceback;
anything else escaping is a bug and keeps its traceback.
"""


class PreprocessError(Exception):
    """Bad input or refused operation; the message names the problem and, where possible, the fix."""
