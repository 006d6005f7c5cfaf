"""The `greentrainer` sub-commands, one module each (train, profile, select, show, evaluate) and their shared option parsing."""
