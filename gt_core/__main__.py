"""`python -m gt_core ...` and `torchrun --nproc_per_node N -m gt_core train ...`: the `greentrainer` command."""

from gt_core.cli import main

if __name__ == "__main__":
    main()
