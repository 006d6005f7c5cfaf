"""The daemon process: lifecycle, socket server and ops, periodic work, live state, metrics and systemd notification."""
