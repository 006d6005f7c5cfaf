"""carbonsched as a systemd service: the unit template, and installing, removing and inspecting it
(`carbonsched service install|uninstall|status`)."""
