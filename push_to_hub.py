"""`python push_to_hub.py FOLDER ...`: publishing a trained folder, `ifam_train.hub.main`."""

from ifam_train.hub import main

if __name__ == "__main__":
    main()
