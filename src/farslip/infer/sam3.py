"""The SAM 3 protocols on rasters: what ``segment`` and ``locate`` build once per process to turn a tile's pixels
into per-name maps with SAM 3 (``engine/sam3.py``) or SAM 3 fused with a CLIP (``engine/fusion.py``).

The raster is tiled exactly as for the CLIP protocols (``scene.py``: every tile takes the windows of the whole
raster's grid that touch it, so the map equals one pass over the raster, with no seams); only the compute step
differs: each window's uint8 pixels go through SAM 3 at their own resolution, the class prompts batched against
the window's image features.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..core.errors import UsageError
from ..engine.fusion import clip_side, fused_runtime
from ..engine.protocols import Sam3Protocol
from ..engine.sam3 import FusionRule, sam3_runtime, synonym_max
from ..models.sam3 import load_sam3, sam3_tokenizer
from .common import load_for_inference
from .scene import SceneTiles, Tile, tile_logits


@dataclass
class Sam3Worker:
    """A process's SAM 3 (or SAM 3 + CLIP) runtime for a run's names, and each name's class."""
    runtime: object                     # Sam3Runtime or FusedRuntime
    query_to_class: torch.Tensor
    num_classes: int
    window_size: int                    # the raster's windows (pixels a side)

    def window(self) -> int:
        return self.window_size

    def tile_maps(self, scene: SceneTiles, tile: Tile) -> torch.Tensor | None:
        """``[Q, h, w]`` each name's window-averaged map on the tile's output pixels (None: no valid pixel)."""
        return tile_logits(scene, tile, dense=self.runtime.image_maps)

    def tile_scores(self, scene: SceneTiles, tile: Tile, on_batch=None) -> torch.Tensor | None:
        """``[C, h, w]`` a class's map: its best name's (SegEarth-OV3's synonym rule); progress moves tile by
        tile (``on_batch`` is not called)."""
        maps = self.tile_maps(scene, tile)
        return None if maps is None else synonym_max(maps, self.query_to_class, self.num_classes)


def sam3_worker(protocol: Sam3Protocol, names: Sequence[str], query_to_class: torch.Tensor, num_classes: int, *,
                checkpoint=None, model=None, clip_checkpoint=None, clip_model=None, clip_tokenizer=None,
                arch: str | None = None, device: str = "auto", amp=None, window_batch_size: int | None = None
                ) -> Sam3Worker:
    """Load SAM 3 (``model``, a loaded ``Sam3Model``, or ``checkpoint``) and, for a fusion, the CLIP
    (``clip_model`` + ``clip_tokenizer`` or ``clip_checkpoint``, ``arch``), and set them up for ``names`` under
    ``protocol`` on a raster (:meth:`~farslip.engine.protocols.Sam3Protocol.raster_rule`)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    sam3 = model if model is not None else load_sam3(checkpoint, device=device)[0]
    rule = protocol.raster_rule()
    on = torch.device(device)
    autocast = protocol.autocast == "always" or (protocol.autocast == "cuda" and on.type == "cuda")
    runtime = sam3_runtime(sam3, sam3_tokenizer(), names, FusionRule(rule.confidence, protocol.instances,
                                                                      protocol.semantic, protocol.presence),
                           autocast=autocast, window_batch=window_batch_size)
    if protocol.needs_clip:
        if clip_model is None:
            clip_model, _, clip_tokenizer = load_for_inference(arch, clip_checkpoint, device=device)
        runtime = fused_runtime(runtime, clip_side(clip_model, clip_tokenizer, names, protocol, amp=amp), protocol)
    return Sam3Worker(runtime, query_to_class, num_classes, rule.crop)


def check_sam3_models(protocol: Sam3Protocol, command: str, checkpoint, model, clip_checkpoint, clip_model) -> None:
    """The weights a SAM 3 protocol needs, refused with one line when missing or given for nothing."""
    if model is None and checkpoint is None:
        raise UsageError(f"{command} --protocol {protocol.name} runs SAM 3: give its weights as --checkpoint "
                         "(sam3.pt, the Hub's facebook/sam3 files, or the name sam3)")
    has_clip = clip_checkpoint is not None or clip_model is not None
    if protocol.needs_clip and not has_clip:
        raise UsageError(f"protocol {protocol.name} fuses SAM 3 with a CLIP: give the CLIP as --clip-checkpoint "
                         "(a file or a released model's name)")
    if has_clip and not protocol.needs_clip:
        raise UsageError(f"--clip-checkpoint: protocol {protocol.name} runs SAM 3 alone (the fusions sam3-clip-* "
                         "take a CLIP)")
