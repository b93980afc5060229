"""`python train.py ...` and `accelerate launch train.py ...`: the training command, `ifam_train.train.main`."""

from ifam_train.train import main

if __name__ == "__main__":
    main()
