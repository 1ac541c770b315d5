"""Long text (Long-CLIP style): 248 text positions built from CLIP's 77, the first 20 kept frozen.

Spec section 2. The official FarSLIP fork keeps two 248-row tensors, ``positional_embedding`` (rows 0..19 used,
frozen) and ``positional_embedding_res`` (rows 20..247 used, trained). We keep stock open_clip's single
``positional_embedding`` and reproduce the freezing with a gradient mask plus a restore after each optimiser
step (AdamW's decoupled weight decay would otherwise move frozen rows).

The text positions live on the CLIP itself or, for open_clip's CustomTextCLIP (SigLIP, PE-Core, ...), on its
``text`` tower (:func:`farslip.models.towers.text_tower`); the stretch needs CLIP's 77 positions and a text tower
that reads the end-of-text token (``argmax`` pooling), and refuses others in one line.
"""
from __future__ import annotations

import torch
from torch import nn

from ..core.errors import UsageError
from .towers import text_tower

KEEP_ROWS = 20
LONG_CONTEXT = 248
FROZEN_ATTR = "farslip_frozen_text_rows"


def stretch_positional_embedding(pos: torch.Tensor, keep: int = KEEP_ROWS) -> torch.Tensor:
    """Long-CLIP's knowledge-preserving stretch of an ``[n, d]`` embedding to ``[4n - 3*keep, d]`` rows.

    Rows ``0..keep-1`` are copied; each gap ``P[i] -> P[i+1]`` (i >= keep) becomes four rows mixed
    1, 3/4-1/4, 1/2-1/2, 1/4-3/4; the last four rows extrapolate ``P[n-1] + k/4 (P[n-1] - P[n-2])``.
    """
    n, d = pos.shape
    a, b = pos[keep:-1], pos[keep + 1:]  # the n-1-keep gaps P[i] -> P[i+1]
    # Written with Long-CLIP's own operation order so the result is bit-identical to the reference.
    gaps = torch.stack([a, 3 * a / 4 + 1 * b / 4, 2 * a / 4 + 2 * b / 4, 1 * a / 4 + 3 * b / 4], dim=1)
    last, step = pos[-1], pos[-1] - pos[-2]
    tail = torch.stack([last + k * step / 4 for k in range(4)])
    out = torch.cat([pos[:keep], gaps.reshape(-1, d), tail], dim=0)
    assert out.shape[0] == 4 * n - 3 * keep
    return out


def fold_long_text_state(state: dict[str, torch.Tensor], keep: int = KEEP_ROWS) -> dict[str, torch.Tensor]:
    """Fold the official ``positional_embedding`` + ``positional_embedding_res`` pair into one embedding.

    The official forward adds ``pos * mask1 + res * mask2`` with mask1 = rows < keep, mask2 = rows >= keep:
    exactly ``cat(pos[:keep], res[keep:])``.
    """
    if "positional_embedding_res" not in state:
        return state
    state = dict(state)
    pos, res = state["positional_embedding"], state.pop("positional_embedding_res")
    if pos.shape != res.shape:
        raise ValueError(f"positional_embedding {tuple(pos.shape)} and positional_embedding_res "
                         f"{tuple(res.shape)} differ in shape")
    state["positional_embedding"] = torch.cat([pos[:keep], res[keep:]], dim=0)
    return state


def set_text_context(model: nn.Module, context_length: int, values: torch.Tensor | None = None) -> None:
    """Give ``model``'s text tower ``context_length`` positions (new embedding and causal mask)."""
    owner = text_tower(model)
    old = owner.positional_embedding
    new = values if values is not None else torch.zeros(context_length, old.shape[1])
    owner.positional_embedding = nn.Parameter(new.to(device=old.device, dtype=old.dtype),
                                              requires_grad=old.requires_grad)
    if getattr(owner, "attn_mask", None) is not None:  # a causal text tower (SigLIP's attends both ways)
        mask = torch.full((context_length, context_length), float("-inf"), device=old.device).triu_(1)
        owner.register_buffer("attn_mask", mask, persistent=False)
    owner.context_length = model.context_length = context_length


def check_long_text(model: nn.Module, arch: str | None = None) -> None:
    """Refuse, in one line, a text tower that Long-CLIP's stretch to 248 positions does not fit."""
    owner = text_tower(model)
    pos = getattr(owner, "positional_embedding", None)
    pool = getattr(owner, "text_pool_type", None) or getattr(owner, "pool_type", None)
    n = None if pos is None else pos.shape[0]
    if n not in (77, LONG_CONTEXT) or pool != "argmax":
        raise UsageError(f"long text (Long-CLIP's {LONG_CONTEXT} positions) needs a CLIP text tower with 77 "
                         f"positions read at the end-of-text token; {arch or type(model).__name__}'s has "
                         f"{n if n is not None else 'no learned'} positions and pools {pool!r} "
                         "(set model.long_text: false)")


def extend_text_context(model: nn.Module, context_length: int = LONG_CONTEXT, keep: int = KEEP_ROWS) -> nn.Module:
    """Expand a 77-position text encoder to Long-CLIP's 248 positions in place; rows 0..keep-1 train frozen."""
    check_long_text(model, getattr(model, "farslip_arch", None))
    n = text_tower(model).positional_embedding.shape[0]
    if n == context_length:
        freeze_leading_text_rows(model, keep)
        return model
    target = 4 * n - 3 * keep
    if context_length != target:
        raise ValueError(f"Long-CLIP stretch of {n} positions gives {target} rows, not {context_length}")
    set_text_context(model, context_length, stretch_positional_embedding(text_tower(model).positional_embedding.data,
                                                                         keep))
    freeze_leading_text_rows(model, keep)
    return model


def freeze_leading_text_rows(model: nn.Module, keep: int = KEEP_ROWS) -> None:
    """Mask the gradient of positional rows ``0..keep-1`` and remember their current values.

    Call it again after loading other weights into the model (a resume does): it then only re-reads the values
    that restore_frozen_rows puts back, without stacking another gradient hook.
    """
    param = text_tower(model).positional_embedding
    already = getattr(model, FROZEN_ATTR, None) is not None and getattr(param, "_farslip_masked", False)
    values = param.detach().full_tensor() if _sharded(param) else param.detach()
    setattr(model, FROZEN_ATTR, (keep, values[:keep].clone()))
    if already:
        return

    def _mask(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:keep] = 0
        return grad

    param.register_hook(_mask)
    param._farslip_masked = True


def restore_frozen_rows(model: nn.Module) -> None:
    """Undo what weight decay did to the frozen rows. Call after every optimiser step (the trainer does)."""
    frozen = getattr(model, FROZEN_ATTR, None)
    if frozen is None:
        return
    keep, values = frozen
    pos = text_tower(model).positional_embedding
    with torch.no_grad():
        if _sharded(pos):  # FSDP: rows live on several ranks
            from torch.distributed.tensor import distribute_tensor

            whole = pos.full_tensor()
            whole[:keep] = values.to(whole)
            pos.copy_(distribute_tensor(whole, pos.device_mesh, pos.placements))
        else:
            pos[:keep].copy_(values.to(pos))


def mask_frozen_grads(model: nn.Module) -> None:
    """Zero the gradient of the frozen rows where the gradient hook cannot (FSDP hands no hook its sharded
    gradients). Call between backward and the optimiser step; a no-op without long text or gradients."""
    frozen = getattr(model, FROZEN_ATTR, None)
    pos = getattr(text_tower(model), "positional_embedding", None)
    if frozen is None or pos is None or pos.grad is None:
        return
    keep = frozen[0]
    with torch.no_grad():
        if _sharded(pos.grad):
            from torch.distributed.tensor import distribute_tensor

            rows = torch.ones(pos.shape[0], 1, dtype=pos.grad.dtype, device=pos.grad.to_local().device)
            rows[:keep] = 0
            pos.grad.mul_(distribute_tensor(rows, pos.grad.device_mesh, pos.grad.placements))
        else:
            pos.grad[:keep] = 0


def _sharded(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)
