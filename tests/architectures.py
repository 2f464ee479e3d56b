"""Small architectures (seed-format JSON lists) shared by the end-to-end tests."""

# A small CNN with dropout, so resume also covers the per-sample dropout masks.
TINY_CNN = [{"class": "Conv2D", "config": {"filters": 4, "kernel_size": [3, 3], "padding": "same"}},
            {"class": "Activation", "config": {"func": "relu"}},
            {"class": "MaxPool2D", "config": {"pool_size": [4, 4]}},
            {"class": "Flatten", "config": {}},
            {"class": "Dense", "config": {"units": 16}},
            {"class": "Activation", "config": {"func": "relu"}},
            {"class": "Dropout", "config": {"rate": 0.25}},
            {"class": "Dense", "config": {"units": 10}}]
