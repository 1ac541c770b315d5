"""A straightforward transcription of SegEarth-OV3's segmentor, for the tests to hold farslip's SAM 3 engine against.

Written from reading earth-insights/SegEarth-OV-3 at 87e5cc1: ``segearthov3_segmentor.py``
(``SegEarthOV3Segmentation.predict`` / ``slide_inference`` / ``_inference_single_view``, ``get_cls_idx``) and its
``sam3/model/sam3_image_processor.py`` (``Sam3Processor.set_image`` / ``set_text_prompt`` /
``_forward_grounding``): one PIL image, PIL crops, one window and one query word at a time, the text encoder run
again for every prompt, one instance at a time, in the official order of operations. The model calls of the
processor (``backbone.forward_image``, ``backbone.forward_text``, ``forward_grounding``) are made on transformers'
``Sam3Model`` with its submodules in the official model's order, one prompt at a time (the official model appends
the geometry encoder's CLS token to every text prompt). Nothing here is shared with farslip's engine.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2


def get_cls_idx(lines):
    """get_cls_idx: every comma-separated name (stripped), and its class."""
    class_names, class_indices = [], []
    for idx, line in enumerate(lines):
        names_i = [i.strip() for i in line.split(",")]
        class_names += names_i
        class_indices += [idx for _ in range(len(names_i))]
    return [n.replace("\n", "") for n in class_names], class_indices


class Processor:
    """Sam3Processor, its model calls made on transformers' Sam3Model."""

    def __init__(self, model, tokenizer, resolution, confidence_threshold):
        self.model, self.tokenizer = model, tokenizer
        self.confidence_threshold = confidence_threshold
        self.transform = v2.Compose([v2.ToDtype(torch.uint8, scale=True), v2.Resize(size=(resolution, resolution)),
                                     v2.ToDtype(torch.float32, scale=True),
                                     v2.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])])

    def set_image(self, image):
        width, height = image.size
        x = self.transform(v2.functional.to_image(image)).unsqueeze(0)
        return {"original_height": height, "original_width": width,
                "backbone_out": self.model.get_vision_features(pixel_values=x)}

    def set_text_prompt(self, prompt, state):
        ids = self.tokenizer([prompt])
        mask = ids != 0
        state["language_features"] = self.model.get_text_features(input_ids=ids,
                                                                  attention_mask=mask.long()).pooler_output
        state["language_mask"] = mask
        return self._forward_grounding(state)

    def _forward_grounding(self, state):
        m, vision = self.model, state["backbone_out"]
        img_feats = vision.fpn_hidden_states[:-1]
        img_pos = vision.fpn_position_encoding[:-1]
        no_box = dict(box_embeddings=torch.zeros(1, 0, 4), box_mask=torch.zeros(1, 0, dtype=torch.bool),
                      box_labels=torch.zeros(1, 0, dtype=torch.long))
        if torch.is_autocast_enabled("cpu"):  # roi_align cannot run under CPU autocast (official: CUDA only)
            with torch.autocast("cpu", enabled=False):
                geo = m.geometry_encoder(img_feats=[f.float() for f in img_feats],
                                         img_pos_embeds=[p.float() for p in img_pos], **no_box)
        else:
            geo = m.geometry_encoder(img_feats=img_feats, img_pos_embeds=img_pos, **no_box)
        prompt = torch.cat([state["language_features"], geo.last_hidden_state], dim=1)
        prompt_mask = torch.cat([state["language_mask"], geo.attention_mask.bool()], dim=1)
        enc = m.detr_encoder(vision_features=[img_feats[-1]], text_features=prompt, vision_pos_embeds=[img_pos[-1]],
                             text_mask=prompt_mask)
        dec = m.detr_decoder(vision_features=enc.last_hidden_state, text_features=enc.text_features,
                             vision_pos_encoding=enc.pos_embeds_flattened, text_mask=prompt_mask,
                             spatial_shapes=enc.spatial_shapes)
        out_logits = m.dot_product_scoring(decoder_hidden_states=dec.intermediate_hidden_states,
                                           text_features=enc.text_features, text_mask=prompt_mask)[-1]  # [1, N, 1]
        heads = m.mask_decoder(decoder_queries=dec.intermediate_hidden_states[-1],
                               backbone_features=list(img_feats), encoder_hidden_states=enc.last_hidden_state,
                               prompt_features=prompt, prompt_mask=prompt_mask)
        out_masks = heads.pred_masks
        out_probs = out_logits.sigmoid()
        presence_score = dec.presence_logits[-1].sigmoid().unsqueeze(1)
        out_probs = (out_probs * presence_score).squeeze(-1)
        keep = out_probs > self.confidence_threshold
        out_probs = out_probs[keep]
        out_masks = out_masks[keep]
        img_h, img_w = state["original_height"], state["original_width"]
        out_masks = F.interpolate(out_masks.unsqueeze(1), (img_h, img_w), mode="bilinear",
                                  align_corners=False).sigmoid()
        out_semantic_masks = F.interpolate(heads.semantic_seg, (img_h, img_w), mode="bilinear",
                                           align_corners=False).sigmoid()
        state["masks_logits"] = out_masks
        state["semantic_mask_logits"] = out_semantic_masks
        state["presence_score"] = presence_score.squeeze().squeeze()
        state["object_score"] = out_probs
        return state


class Segmentor:
    """SegEarthOV3Segmentation with a given model (its __init__ builds the official one from sam3.pt)."""

    def __init__(self, model, tokenizer, class_lines, *, resolution, prob_thd=0.0, bg_idx=0, slide_stride=0,
                 slide_crop=0, confidence_threshold=0.5, use_sem_seg=True, use_presence_score=True,
                 use_transformer_decoder=True, bf16=False):
        self.processor = Processor(model, tokenizer, resolution, confidence_threshold)
        self.query_words, self.query_idx = get_cls_idx(class_lines)
        self.num_cls = max(self.query_idx) + 1
        self.num_queries = len(self.query_idx)
        self.query_idx = torch.Tensor(self.query_idx).to(torch.int64)
        self.prob_thd, self.bg_idx = prob_thd, bg_idx
        self.slide_stride, self.slide_crop = slide_stride, slide_crop
        self.use_sem_seg, self.use_presence_score = use_sem_seg, use_presence_score
        self.use_transformer_decoder = use_transformer_decoder
        self.bf16 = bf16

    def _inference_single_view(self, image):
        w, h = image.size
        seg_logits = torch.zeros((self.num_queries, h, w))
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with torch.no_grad(), autocast:
            inference_state = self.processor.set_image(image)
            for query_idx, query_word in enumerate(self.query_words):
                inference_state = self.processor.set_text_prompt(query_word, inference_state)
                if self.use_transformer_decoder:
                    if inference_state["masks_logits"].shape[0] > 0:
                        inst_len = inference_state["masks_logits"].shape[0]
                        for inst_id in range(inst_len):
                            instance_logits = inference_state["masks_logits"][inst_id].squeeze()
                            instance_score = inference_state["object_score"][inst_id]
                            if instance_logits.shape != (h, w):
                                instance_logits = F.interpolate(instance_logits.view(1, 1, *instance_logits.shape),
                                                                size=(h, w), mode="bilinear",
                                                                align_corners=False).squeeze()
                            seg_logits[query_idx] = torch.max(seg_logits[query_idx], instance_logits * instance_score)
                if self.use_sem_seg:
                    semantic_logits = inference_state["semantic_mask_logits"]
                    if semantic_logits.shape != (h, w):
                        semantic_logits = F.interpolate(semantic_logits, size=(h, w), mode="bilinear",
                                                        align_corners=False).squeeze()
                    seg_logits[query_idx] = torch.max(seg_logits[query_idx], semantic_logits)
                if self.use_presence_score:
                    seg_logits[query_idx] = seg_logits[query_idx] * inference_state["presence_score"]
        return seg_logits

    def slide_inference(self, image, stride, crop_size):
        w_img, h_img = image.size
        h_stride, w_stride = (stride, stride)
        h_crop, w_crop = (crop_size, crop_size)
        preds = torch.zeros((self.num_queries, h_img, w_img))
        count_mat = torch.zeros((1, h_img, w_img))
        h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
        w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
        for h_idx in range(h_grids):
            for w_idx in range(w_grids):
                y1 = h_idx * h_stride
                x1 = w_idx * w_stride
                y2 = min(y1 + h_crop, h_img)
                x2 = min(x1 + w_crop, w_img)
                y1 = max(y2 - h_crop, 0)
                x1 = max(x2 - w_crop, 0)
                crop_img = image.crop((x1, y1, x2, y2))
                crop_seg_logit = self._inference_single_view(crop_img)
                preds[:, y1:y2, x1:x2] += crop_seg_logit
                count_mat[:, y1:y2, x1:x2] += 1
        assert (count_mat == 0).sum() == 0, "Error: Sparse sliding window coverage."
        return preds / count_mat

    def predict(self, image_path):
        """``(seg_logits [C, H, W], seg_pred [H, W])`` of one image file."""
        image = Image.open(image_path).convert("RGB")
        ori_shape = (image.size[1], image.size[0])
        if self.slide_crop > 0 and (self.slide_crop < image.size[0] or self.slide_crop < image.size[1]):
            seg_logits = self.slide_inference(image, self.slide_stride, self.slide_crop)
        else:
            seg_logits = self._inference_single_view(image)
        if seg_logits.shape[-2:] != ori_shape:
            seg_logits = F.interpolate(seg_logits.unsqueeze(0), size=ori_shape, mode="bilinear",
                                       align_corners=False).squeeze(0)
        if self.num_cls != self.num_queries:
            seg_logits = seg_logits.unsqueeze(0)
            cls_index = torch.nn.functional.one_hot(self.query_idx)
            cls_index = cls_index.T.view(self.num_cls, len(self.query_idx), 1, 1)
            seg_logits = (seg_logits * cls_index).max(1)[0]
        seg_pred = torch.argmax(seg_logits, dim=0)
        max_vals = seg_logits.max(0)[0]
        seg_pred[max_vals < self.prob_thd] = self.bg_idx
        return seg_logits, seg_pred


def image_array(path) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))
