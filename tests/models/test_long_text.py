"""Long-CLIP context extension: the stretch, the frozen rows, and training with them."""
from __future__ import annotations

import torch

import farslip
from farslip.models.long_text import restore_frozen_rows, stretch_positional_embedding


def _longclip_reference(pre: torch.Tensor, keep: int = 20) -> torch.Tensor:
    """Long-CLIP's loop, written as its authors wrote it."""
    length, dim = pre.shape
    new = torch.zeros([4 * length - 3 * keep, dim])
    for i in range(keep):
        new[i] = pre[i]
    for i in range(length - 1 - keep):
        new[4 * i + keep] = pre[i + keep]
        new[4 * i + 1 + keep] = 3 * pre[i + keep] / 4 + 1 * pre[i + 1 + keep] / 4
        new[4 * i + 2 + keep] = 2 * pre[i + keep] / 4 + 2 * pre[i + 1 + keep] / 4
        new[4 * i + 3 + keep] = 1 * pre[i + keep] / 4 + 3 * pre[i + 1 + keep] / 4
    for k in range(4):
        new[4 * length - 3 * keep - 4 + k] = pre[length - 1] + k * (pre[length - 1] - pre[length - 2]) / 4
    return new


def test_stretch_is_bit_identical_to_longclip():
    torch.manual_seed(0)
    pre = torch.randn(77, 16)
    out = stretch_positional_embedding(pre)
    assert out.shape == (248, 16)
    assert torch.equal(out, _longclip_reference(pre))


def test_extend_keeps_short_texts_and_freezes_leading_rows(tiny_model):
    model, _, _ = tiny_model
    import open_clip

    text77 = open_clip.get_tokenizer("Test-Tiny-ViT", context_length=77)(["a ship in a harbour"])
    before = model.encode_text(text77)
    pos77 = model.positional_embedding.detach().clone()
    farslip.extend_text_context(model, 248)
    assert model.context_length == 248 and model.attn_mask.shape == (248, 248)
    text248 = open_clip.get_tokenizer("Test-Tiny-ViT", context_length=248)(["a ship in a harbour"])
    # Rows 0..19 unchanged, so short prompts (< 20 tokens) encode identically (the causal mask hides the rest).
    assert torch.equal(model.positional_embedding[:20], pos77[:20])
    assert torch.allclose(model.encode_text(text248), before, atol=1e-6)

    # Train a few AdamW steps with weight decay: rows 0..19 never move, rows 20.. do.
    opt = torch.optim.AdamW([model.positional_embedding], lr=1e-2, weight_decay=1.0)
    start = model.positional_embedding.detach().clone()
    long_text = open_clip.get_tokenizer("Test-Tiny-ViT", context_length=248)([" ".join(["harbour"] * 60)])
    for _ in range(3):
        opt.zero_grad()
        model.encode_text(long_text).pow(2).sum().backward()
        assert torch.all(model.positional_embedding.grad[:20] == 0)
        opt.step()
        restore_frozen_rows(model)
    assert torch.equal(model.positional_embedding[:20], start[:20])
    assert not torch.equal(model.positional_embedding[20:], start[20:])
