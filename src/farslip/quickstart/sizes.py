"""The quickstart's sizes (light: the command line lists them without loading torch)."""

SIZES = {
    # n training images, image side, epochs of (pretrain, stage 1, stage 2), max steps per run (None = all)
    "full": {"n": 768, "image": 96, "epochs": (6, 1, 1), "max_steps": None, "batch": None, "overlays": 3,
             "map_grid": 4},
    "tiny": {"n": 48, "image": 64, "epochs": (1, 1, 1), "max_steps": 2, "batch": 8, "overlays": 1, "map_grid": 2},
}
