"""Where the budget ρ comes from (constant, schedule, callable, the carbonsched daemon) and pausing on its plan."""
