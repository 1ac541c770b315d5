"""Outputs of the OFFICIAL SAM 3 code (facebookresearch/sam3) on a tiny SAM 3, for farslip's loader and engine to
be held against: the official module classes built at farslip's tiny size (``farslip.models.sam3.TINY``), weights
drawn by :func:`official_weights` (which the test redraws), one 112 x 112 window, two text prompts through
``Sam3Image.forward_grounding`` as ``Sam3Processor.set_text_prompt`` calls it.

Needs the official package (``pip install --no-deps sam3==0.1.4 ftfy iopath einops pycocotools psutil`` beside
torch; it cannot be installed with farslip's numpy), run on a CPU-only machine with its three CUDA-only spots worked
around below (nothing that changes a number):

    python tests/data/sam3_official/make.py     # -> keys.json, expected.npz beside this file
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent
PROMPTS = ["building", "a very long road next to the old river"]
SEED = 1
SCALE = 0.2


def official_weights(keys: dict[str, dict]) -> dict[str, torch.Tensor]:
    """Every floating-point tensor of ``keys`` (name -> shape, dtype) drawn N(0, SCALE^2) in sorted name order from
    one seeded generator; the complex RoPE tables (recomputed by any loader) are zeros. The test redraws the
    same weights from keys.json."""
    g = torch.Generator().manual_seed(SEED)
    out = {}
    for name in sorted(keys):
        shape, dtype = keys[name]["shape"], keys[name]["dtype"]
        if dtype.startswith("complex"):
            out[name] = torch.zeros(shape, dtype=torch.complex64)
        else:
            out[name] = torch.randn(shape, generator=g) * SCALE
    return out


def build_official_tiny(bpe_path: str):
    """The official SAM 3 image model (model_builder.py's composition) at farslip's TINY sizes."""
    from sam3.model.decoder import TransformerDecoder, TransformerDecoderLayer
    from sam3.model.encoder import TransformerEncoderFusion, TransformerEncoderLayer
    from sam3.model.geometry_encoders import SequenceGeometryEncoder
    from sam3.model.maskformer_segmentation import PixelDecoder, UniversalSegmentationHead
    from sam3.model.model_misc import MLP, DotProductScoring, TransformerWrapper
    from sam3.model.model_misc import MultiheadAttentionWrapper as MultiheadAttention
    from sam3.model.necks import Sam3DualViTDetNeck
    from sam3.model.position_encoding import PositionEmbeddingSine
    from sam3.model.sam3_image import Sam3Image
    from sam3.model.text_encoder_ve import VETextEncoder
    from sam3.model.tokenizer_ve import SimpleTokenizer
    from sam3.model.vitdet import ViT
    from sam3.model.vl_combiner import SAM3VLBackbone

    d, heads, ffn = 32, 2, 64

    def mha(batch_first=False):
        return MultiheadAttention(num_heads=heads, dropout=0.0, embed_dim=d, batch_first=batch_first)

    def sine():
        return PositionEmbeddingSine(num_pos_feats=d, normalize=True, scale=None, temperature=10000)

    vit = ViT(img_size=112, pretrain_img_size=56, patch_size=14, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
              norm_layer="LayerNorm", drop_path_rate=0.0, qkv_bias=True, use_abs_pos=True, tile_abs_pos=True,
              global_att_blocks=(1,), rel_pos_blocks=(), use_rope=True, use_interp_rope=True, window_size=4,
              pretrain_use_cls_token=True, retain_cls_token=False, ln_pre=True, ln_post=False,
              return_interm_layers=False, bias_patch_embed=False)
    neck = Sam3DualViTDetNeck(position_encoding=sine(), d_model=d, scale_factors=[4.0, 2.0, 1.0, 0.5], trunk=vit,
                              add_sam2_neck=False)
    text = VETextEncoder(tokenizer=SimpleTokenizer(bpe_path=bpe_path), d_model=d, width=32, heads=2, layers=2)
    enc_layer = TransformerEncoderLayer(activation="relu", d_model=d, dim_feedforward=ffn, dropout=0.0,
                                        pos_enc_at_attn=True, pos_enc_at_cross_attn_keys=False,
                                        pos_enc_at_cross_attn_queries=False, pre_norm=True,
                                        self_attention=mha(True), cross_attention=mha(True))
    encoder = TransformerEncoderFusion(layer=enc_layer, num_layers=1, d_model=d, num_feature_levels=1, frozen=False,
                                       use_act_checkpoint=False, add_pooled_text_to_img_feat=False,
                                       pool_text_with_mask=True)
    dec_layer = TransformerDecoderLayer(activation="relu", d_model=d, dim_feedforward=ffn, dropout=0.0,
                                        cross_attention=mha(), n_heads=heads, use_text_cross_attention=True)
    # resolution/stride None: the box-RPB coordinates are made on the input's device instead of a cache built on
    # "cuda" at construction (same values)
    decoder = TransformerDecoder(layer=dec_layer, num_layers=1, num_queries=10, return_intermediate=True,
                                 box_refine=True, num_o2m_queries=0, dac=True, boxRPB="log", d_model=d, frozen=False,
                                 interaction_layer=None, dac_use_selfatt_ln=True, resolution=None, stride=None,
                                 use_act_checkpoint=False, presence_token=True)
    scoring = DotProductScoring(d_model=d, d_proj=d, prompt_mlp=MLP(input_dim=d, hidden_dim=ffn, output_dim=d,
                                                                    num_layers=2, dropout=0.0, residual=True,
                                                                    out_norm=nn.LayerNorm(d)))
    seg = UniversalSegmentationHead(hidden_dim=d, upsampling_stages=3, aux_masks=False, presence_head=False,
                                    dot_product_scorer=None, act_ckpt=False, cross_attend_prompt=mha(),
                                    pixel_decoder=PixelDecoder(num_upsampling_stages=3, interpolation_mode="nearest",
                                                               hidden_dim=d))
    geo_layer = TransformerEncoderLayer(activation="relu", d_model=d, dim_feedforward=ffn, dropout=0.0,
                                        pos_enc_at_attn=False, pre_norm=True, self_attention=mha(),
                                        pos_enc_at_cross_attn_queries=False, pos_enc_at_cross_attn_keys=True,
                                        cross_attention=mha())
    geo = SequenceGeometryEncoder(pos_enc=sine(), encode_boxes_as_points=False, points_direct_project=True,
                                  points_pool=True, points_pos_enc=True, boxes_direct_project=True, boxes_pool=True,
                                  boxes_pos_enc=True, d_model=d, num_layers=1, layer=geo_layer, use_act_ckpt=False,
                                  add_cls=True, add_post_encode_proj=True)
    return Sam3Image(backbone=SAM3VLBackbone(visual=neck, text=text, scalp=1),
                     transformer=TransformerWrapper(encoder=encoder, decoder=decoder, d_model=d),
                     input_geometry_encoder=geo, segmentation_head=seg, num_feature_levels=1, o2m_mask_predict=True,
                     dot_prod_scoring=scoring, use_instance_query=False, multimask_output=True,
                     inst_interactive_predictor=None, matcher=None).eval()


def window() -> np.ndarray:
    """The 112 x 112 RGB window (uint8, smooth gradients and a bright square)."""
    y, x = np.mgrid[0:112, 0:112]
    rgb = np.stack([x * 2, y * 2, (x + y)], axis=-1).astype(np.uint8)
    rgb[30:70, 40:90] = [240, 230, 60]
    return rgb


def main() -> int:
    import open_clip
    from sam3.model.data_misc import FindStage
    from torchvision.transforms import v2

    torch.Tensor.pin_memory = lambda self, *a, **k: self  # geometry_encoders.py pins host memory for a CUDA copy
    model = build_official_tiny(os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz"))
    state = model.state_dict()
    keys = {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for k, v in state.items()}
    weights = official_weights(keys)
    model.load_state_dict({k: (state[k] if k.endswith("freqs_cis") else v) for k, v in weights.items()})
    # Sam3Processor.transform at the tiny resolution
    transform = v2.Compose([v2.ToDtype(torch.uint8, scale=True), v2.Resize(size=(112, 112)),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=[0.5] * 3, std=[0.5] * 3)])
    pixels = transform(v2.functional.to_image(window())).unsqueeze(0)
    find = FindStage(img_ids=torch.tensor([0]), text_ids=torch.tensor([0]), input_boxes=None, input_boxes_mask=None,
                     input_boxes_label=None, input_points=None, input_points_mask=None)
    out = {}
    with torch.no_grad():
        backbone_out = model.backbone.forward_image(pixels)
        for i, prompt in enumerate(PROMPTS):
            backbone_out.update(model.backbone.forward_text([prompt], device="cpu"))
            res = model.forward_grounding(backbone_out=backbone_out, find_input=find,
                                          geometric_prompt=model._get_dummy_prompt(), find_target=None)
            out[f"logits{i}"] = res["pred_logits"][0, :, 0].numpy()
            out[f"boxes{i}"] = res["pred_boxes"][0].numpy()
            out[f"masks{i}"] = res["pred_masks"][0].numpy()
            out[f"presence{i}"] = res["presence_logit_dec"].reshape(1).numpy()
            out[f"semantic{i}"] = res["semantic_seg"][0].numpy()
    (HERE / "keys.json").write_text(json.dumps(keys, indent=0, sort_keys=True) + "\n")
    np.savez_compressed(HERE / "expected.npz", window=window(), **out)
    print(f"wrote {HERE / 'keys.json'} ({len(keys)} tensors) and {HERE / 'expected.npz'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
