"""``farslip quickstart``: the whole method on this machine, with nothing to download.

1. a synthetic remote-sensing world (scenes, land cover, objects; written in every format the project reads);
2. a tiny CLIP pretrained on its global captions (the stand-in for OpenAI CLIP);
3. FarSLIP stage 1 and 4. stage 2 from it, with the project's trainer and recipes;
5. the pretrained, stage-1 and stage-2 models evaluated on classification, retrieval and OVSS;
6. ``report.md`` with the tables and pictures, and the final model as a self-describing checkpoint.
"""
# The package: run.py (the pipeline), analysis.py (what the numbers say), figures.py and report.py (the report's
# pictures, and its text from report.md.j2), sizes.py (the runs it offers). The command is cli/quickstart.py.
from ..core.lazy import lazy_exports
from .sizes import SIZES

__getattr__, __dir__ = lazy_exports(__name__, {name: ".run" for name in ("run_quickstart", "run_seeds",
                                                                          "summarise_seeds")})
__all__ = ["SIZES", "run_quickstart", "run_seeds", "summarise_seeds"]
