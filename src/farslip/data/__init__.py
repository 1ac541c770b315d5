"""Data: readers of MGRS JSON, image-caption CSV and webdataset shards; views; the batch contract."""
from .batch import STAGE1_KEYS, STAGE2_KEYS, check_batch
from .loader import LoaderConfig, TrainLoader, collate
from .records import CaptionCSVRecords, MGRSRecords, Record, RegionObject, TrainDataError, read_bbox
from .shards import expand_shards
from .views import ViewConfig, ViewMaker

__all__ = ["CaptionCSVRecords", "LoaderConfig", "MGRSRecords", "Record", "RegionObject", "STAGE1_KEYS",
           "STAGE2_KEYS", "TrainLoader", "ViewConfig", "ViewMaker", "check_batch", "collate", "expand_shards",
           "TrainDataError", "read_bbox"]
