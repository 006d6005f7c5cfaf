"""The main job end to end on one machine: a carbonsched daemon hands ρ to a GreenTrainer run.

This package is the one place that uses both halves of the project: gt_core's trainer in-process
and carbonsched through its command line (``carbonsched run`` and ``carbonsched report``) and its
client. Neither half imports it. Run it with ``python -m carbon_demo`` or ``carbon-demo``.
"""
