"""Command-line plumbing shared by the `greentrainer`, `carbonsched` and `carbon-demo` commands.

It depends on typer only, so either half of the project can use it without importing the other.
"""
