"""What the synthetic world contains: scene classes, object categories, OVSS label values."""
from __future__ import annotations

SCENES = ("airport", "harbor", "farmland", "forest", "residential area", "industrial area", "river", "desert")
OBJECT_CATEGORIES = ("airplane", "building", "ship", "storage tank", "swimming pool", "tennis court", "vehicle")

# land-cover / OVSS label values (background index 0)
BACKGROUND, WATER, FOREST, FARMLAND, BARE, ROAD, BUILDING = 0, 1, 2, 3, 4, 5, 6
AIRPLANE, SHIP, TANK, VEHICLE, COURT, POOL = 7, 8, 9, 10, 11, 12
OVSS_CLASSES = (
    ("background",),
    ("water", "river", "lake", "sea"),
    ("forest", "tree", "woodland"),
    ("farmland", "cropland", "agricultural field"),
    ("bare land", "barren", "desert", "sand"),
    ("road", "runway", "pavement"),
    ("building", "roof", "house"),
    ("airplane", "plane", "aircraft"),
    ("ship", "boat"),
    ("storage tank", "tank"),
    ("vehicle", "car"),
    ("tennis court",),
    ("swimming pool", "pool"),
)
OBJECT_LABEL = {"airplane": AIRPLANE, "building": BUILDING, "ship": SHIP, "storage tank": TANK,
                "swimming pool": POOL, "tennis court": COURT, "vehicle": VEHICLE}
LAND_COVER_NAMES = {WATER: "water", FOREST: "forest", FARMLAND: "farmland", BARE: "bare land", ROAD: "road"}
