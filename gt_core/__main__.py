"""``python -m gt_core`` runs the ``greentrainer`` CLI (``torchrun -m gt_core train ...``)."""

from gt_core.cli import main

main()
