"""The one error type of the demo."""


class DemoError(Exception):
    """The demo cannot run (daemon does not start, bad output directory); one line for the user."""
