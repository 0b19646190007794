"""The one exception type the CLI turns into a single line and a non-zero exit."""


class PyglueError(Exception):
    """A failure the user can act on; its message names the bad value."""
