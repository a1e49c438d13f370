"""Train any experiment config: `python train.py --config configs/nmt/small.yaml [--ckpt_path last.ckpt]`."""

from core.cli import main

if __name__ == "__main__":
    main()
